"""Voice activity detection with Silero VAD (ONNX, 16 kHz) and VAD-guided segmentation.

The segmenter keeps every stretch of speech and cuts only inside silences, so segments of at
most ``max_seconds`` start and end between words; long non-speech stretches are skipped (the
segments keep their true offsets, so timestamps stay right). Memory stays bounded: audio is
consumed block by block and only the not-yet-emitted part is held.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from speechllm.audio import SAMPLE_RATE
from speechllm.segment import AudioSegment, quietest_cut
from speechllm.zoo import DEFAULT_VAD

FRAME = 512  # samples per VAD decision (32 ms)
CONTEXT = 64  # samples of left context the model sees with each frame


class SileroVAD:
    """Per-frame speech probabilities; state is carried across calls so audio can stream in."""

    def __init__(self, model: str = DEFAULT_VAD):
        import onnxruntime as ort

        from speechllm.zoo import resolve

        path = resolve(model).path
        path = path if path.is_file() else path / "silero_vad_16k_sequence.onnx"
        if not path.exists():
            raise FileNotFoundError(f"{path}: Silero VAD sequence model not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities for each complete 512-sample frame (leftover samples wait for more)."""
        audio = np.concatenate([self._rest, np.asarray(audio, dtype=np.float32)])
        n = len(audio) // FRAME
        self._rest = audio[n * FRAME :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.concatenate([self._context, audio[: n * FRAME]])
        index = np.arange(n)[:, None] * FRAME + np.arange(FRAME + CONTEXT)[None, :]
        probs, self._h, self._c = self.session.run(None, {"input": padded[index], "h": self._h, "c": self._c})
        self._context = audio[n * FRAME - CONTEXT : n * FRAME]
        return probs.astype(np.float32)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    min_silence: float = 0.3  # shorter gaps count as speech
    pad: float = 0.2  # kept around speech on both sides
    max_seconds: float = 30.0


def _speech_mask(probs: np.ndarray, opts: VadOptions) -> np.ndarray:
    speech = probs > opts.threshold
    gap = int(opts.min_silence * SAMPLE_RATE / FRAME)
    idx = np.flatnonzero(speech)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= gap:
            speech[a:b] = True
    pad = int(opts.pad * SAMPLE_RATE / FRAME)
    if pad and speech.any():
        speech = np.convolve(speech, np.ones(2 * pad + 1), mode="same") > 0
    return speech


def vad_segments(blocks: Iterable[np.ndarray], vad: SileroVAD,
                 opts: VadOptions = VadOptions()) -> Iterator[AudioSegment]:
    """Segments of speech (≤ ``max_seconds``) from a stream of 16 kHz blocks."""
    vad.reset()
    max_frames = int(opts.max_seconds * SAMPLE_RATE / FRAME)
    audio = np.zeros(0, dtype=np.float32)
    probs = np.zeros(0, dtype=np.float32)
    base = 0  # sample offset of audio[0] in the recording

    def take(start: int, end: int) -> AudioSegment:
        return AudioSegment(base + start * FRAME, base + end * FRAME, audio[start * FRAME : end * FRAME])

    lookahead = int(SAMPLE_RATE / FRAME)  # decide a window only with 1 s of audio past it

    for block in blocks:
        audio = np.concatenate([audio, np.asarray(block, dtype=np.float32)])
        probs = np.concatenate([probs, vad(block)])
        while True:
            speech = _speech_mask(probs, opts)
            if not speech.any():  # silence only: keep just the look-ahead
                drop = max(0, len(probs) - lookahead)
            else:
                first = int(np.argmax(speech))
                if len(probs) < first + max_frames + lookahead:
                    break
                silent = np.flatnonzero(~speech[first : first + max_frames])
                if len(silent):  # cut in the middle of the last silence in the window
                    runs = np.split(silent, np.flatnonzero(np.diff(silent) > 1) + 1)
                    end = first + int(runs[-1][len(runs[-1]) // 2])
                else:
                    end = quietest_cut(probs, first + max_frames // 2, first + max_frames, 1)
                end = max(end, first + 1)
                yield take(first, end)
                drop = end
            audio, probs, base = audio[drop * FRAME :], probs[drop:], base + drop * FRAME
            if not speech.any():
                break
    speech = _speech_mask(probs, opts)
    if speech.any():
        first = int(np.argmax(speech))
        last = len(speech) - int(np.argmax(speech[::-1]))
        end_sample = len(audio) if last == len(speech) else last * FRAME
        while first * FRAME < end_sample:
            stop = min(end_sample, (first + max_frames) * FRAME)
            yield AudioSegment(base + first * FRAME, base + stop, audio[first * FRAME : stop])
            first += max_frames
