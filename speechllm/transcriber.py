"""Speech → text with the Whisper baseline: any length, batched, with segment timestamps.

Long recordings are streamed and cut into ≤ 30 s segments (``speechllm.segment``); segments of
several files share one batch, so many short files and one long file both keep the model busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechllm.audio import SAMPLE_RATE, AudioError, audio_info, stream_audio
from speechllm.device import pick_device
from speechllm.segment import AudioSegment, segment_stream
from speechllm.zoo import DEFAULT_ASR

AudioSource = str | Path | np.ndarray


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    stop: str | None = None  # why its generation ended ("end", "repetition", "length"), when known


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    duration: float

    @property
    def stop(self) -> str | None:
        """The reason a segment's generation ended, the worst first: a length cut, then a loop."""
        stops = {s.stop for s in self.segments}
        return next((r for r in ("length", "repetition", "end") if r in stops), None)


SegmentText = tuple[str, str | None]  # a decoded segment's text and why its generation ended


class Segmenter:
    """Cuts one recording into ≤ 30 s pieces; ``fixed`` cuts at quiet points, ``vad`` keeps speech only."""

    def __call__(self, blocks: Iterable[np.ndarray], max_seconds: float) -> Iterator[AudioSegment]:
        raise NotImplementedError


class FixedSegmenter(Segmenter):
    def __call__(self, blocks, max_seconds):
        return segment_stream(blocks, max_seconds)


class VadSegmenter(Segmenter):
    def __init__(self) -> None:
        from speechllm.vad import SileroVAD

        self.vad = SileroVAD()

    def __call__(self, blocks, max_seconds):
        from speechllm.vad import VadOptions, vad_segments

        return vad_segments(blocks, self.vad, VadOptions(max_seconds=max_seconds))


SEGMENTERS: dict[str, type[Segmenter]] = {"vad": VadSegmenter, "fixed": FixedSegmenter}


def make_segmenter(name: str = "auto") -> Segmenter:
    """``auto``: Silero VAD when its bundle is installed, else fixed-length cuts at quiet points."""
    if name == "auto":
        from speechllm.zoo import DEFAULT_VAD, ZOO

        name = "vad" if ZOO[DEFAULT_VAD].bundle.folder() is not None else "fixed"
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r} (choose from {', '.join(SEGMENTERS)})")
    return SEGMENTERS[name]()


def open_source(source: AudioSource) -> tuple[Iterable[np.ndarray], float]:
    """Audio blocks of a file or array, and its duration in seconds."""
    if isinstance(source, np.ndarray):
        audio = np.asarray(source, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError("<array>", "expected a non-empty 1-D float array at 16 kHz")
        if not np.isfinite(audio).all():
            raise AudioError("<array>", "audio contains NaN or Inf samples")
        return [audio], len(audio) / SAMPLE_RATE
    return stream_audio(source), audio_info(source).duration


QUANT_CHOICES = ("int8", "int4")


def quantize_linears(model: torch.nn.Module, quant: str) -> int:
    """Swap every ``nn.Linear`` for a round-to-nearest ``QuantLinear`` (``speechllm.quant``); returns
    how many. int8 lets the kernel choice quantize activations too (fbgemm dynamic int8: measured
    ~2-3x faster than fp32 for whisper-tiny.en on 2 CPU cores, same transcripts on examples/)."""
    from speechllm.quant import INT4, INT8, QuantLinear
    from speechllm.quant.model import QuantConfig, set_module, target_linears

    if quant not in QUANT_CHOICES:
        raise ValueError(f"--quant {quant!r}: choose from {', '.join(QUANT_CHOICES)}")
    spec = INT8 if quant == "int8" else INT4
    linears = target_linears(model, QuantConfig(bits=spec.bits, group_size=spec.group_size))
    for name, linear in linears.items():
        set_module(model, name, QuantLinear.from_linear(linear, spec, exact=False))
    return len(linears)


class WhisperTranscriber:
    """Batch transcription with the project's own Whisper (greedy or beam search)."""

    max_segment_seconds = 30.0

    def __init__(self, model: str = DEFAULT_ASR, device: str | None = None,
                 beam_size: int = 1, batch_size: int = 8, dtype: torch.dtype = torch.float32,
                 segmenter: str = "auto", quant: str | None = None):
        from speechllm.whisper import DecodingOptions, load_whisper
        from speechllm.zoo import resolve

        self.device = pick_device(device)
        self.resolved = resolve(model)
        self.model, self.tokenizer = load_whisper(self.resolved.path, device=self.device, dtype=dtype)
        if quant is not None:
            quantize_linears(self.model, quant)
        self.options = DecodingOptions(beam_size=beam_size)
        self.batch_size = max(1, batch_size)
        self.segmenter = make_segmenter(segmenter)

    def decode_segments(self, segments: list[np.ndarray]) -> list[SegmentText]:
        """Text of each ≤ 30 s segment, decoded as one batch (no stop reason: Whisper's own)."""
        from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram
        from speechllm.whisper import decode

        lengths = torch.tensor([len(s) for s in segments])
        audio = torch.zeros(len(segments), int(lengths.max()))
        for i, seg in enumerate(segments):
            audio[i, : len(seg)] = torch.from_numpy(seg)
        pad_to = N_SAMPLES_30S if self.options.pad_to_30s else None
        mel, frames = log_mel_spectrogram(audio.to(self.device), lengths.to(self.device), pad_to=pad_to)
        results = decode(self.model, self.tokenizer, mel, frames, self.options)
        return [(r.text.strip(), None) for r in results]

    def transcribe(self, source: AudioSource) -> Transcript:
        result = next(self.transcribe_many([source]))[1]
        if isinstance(result, AudioError):
            raise result
        return result

    def transcribe_many(
        self, sources: Iterable[AudioSource]
    ) -> Iterator[tuple[AudioSource, Transcript | AudioError]]:
        """Yield ``(source, Transcript or AudioError)`` in input order; bad files do not stop it."""
        pending: list[tuple[int, AudioSegment]] = []
        done: dict[int, list[tuple[AudioSegment, SegmentText]]] = {}
        order: list[tuple[AudioSource, AudioError | None, int, float]] = []  # + n segments, duration
        finished: list[int] = []

        def flush() -> None:
            texts = self.decode_segments([seg.audio for _, seg in pending])
            for (idx, seg), text in zip(pending, texts, strict=True):
                done.setdefault(idx, []).append((seg, text))
            pending.clear()

        def ready() -> Iterator[tuple[AudioSource, Transcript | AudioError]]:
            while order:
                source, error, count, duration = order[0]
                idx = len(finished)
                if error is None and len(done.get(idx, [])) < count:
                    return
                order.pop(0)
                finished.append(idx)
                parts = done.pop(idx, [])
                yield source, (error if error is not None else self._assemble(parts, duration))

        for idx, source in enumerate(sources):
            count, error, duration = 0, None, 0.0
            try:
                blocks, duration = open_source(source)
                for seg in self.segmenter(blocks, self.max_segment_seconds):
                    pending.append((idx, seg))
                    count += 1
                    if len(pending) >= self.batch_size:
                        flush()
            except AudioError as exc:
                error = exc
                pending[:] = [p for p in pending if p[0] != idx]
                done.pop(idx, None)
            order.append((source, error, count, duration))
            yield from ready()
        if pending:
            flush()
        yield from ready()

    @staticmethod
    def _assemble(parts: list[tuple[AudioSegment, SegmentText]], duration: float) -> Transcript:
        parts.sort(key=lambda p: p[0].start)
        segments = tuple(Segment(round(s.start / SAMPLE_RATE, 3), round(s.end / SAMPLE_RATE, 3), text, stop)
                         for s, (text, stop) in parts)
        text = " ".join(s.text for s in segments if s.text)
        return Transcript(text, segments, duration)
