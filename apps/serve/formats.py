"""Response bodies: transcripts in OpenAI's ``response_format``s, and speech as mp3, opus, wav, pcm or flac.

Text, SRT and WebVTT are ``speechllm.apps.subtitles``' writers (the ``transcribe --format`` files);
``verbose_json`` carries the transcriber's segments (times, log-probabilities, temperature) and,
when asked, its words (Whisper's word timestamps from cross-attention alignment).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from starlette.responses import JSONResponse, PlainTextResponse, Response

from speechllm.apps.serve.models import SpeechToText
from speechllm.apps.subtitles import FORMATS as SUBTITLES
from speechllm.transcriber import Transcript

SEGMENT_FIELDS = ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob", "stop")


def language_name(code: str | None) -> str | None:
    """``en`` -> ``english``, as OpenAI's verbose_json names languages."""
    from speechllm.speechlm.model import LANGUAGES

    return LANGUAGES.get(code, code).lower() if code else None


def verbose(t: Transcript, request: SpeechToText) -> dict:
    language = "en" if request.task == "translate" else (t.language or request.language or "en")
    segments = []
    for i, s in enumerate(t.segments):
        row = {"id": i, "seek": int(round(s.start * 100)), "start": s.start, "end": s.end, "text": s.text}
        row.update({key: getattr(s, key) for key in SEGMENT_FIELDS if getattr(s, key) is not None})
        segments.append(row)
    body = {"task": request.task, "language": language_name(language), "duration": t.duration,
            "text": t.text, "segments": segments}
    if request.words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end,
                          "probability": w.probability} for s in t.segments for w in (s.words or ())]
    return body


TranscriptFormat = Callable[[Transcript, SpeechToText], Response]

TRANSCRIPT_FORMATS: dict[str, TranscriptFormat] = {
    "json": lambda t, request: JSONResponse({"text": t.text}),
    "text": lambda t, request: PlainTextResponse(SUBTITLES["txt"](t)),
    "srt": lambda t, request: PlainTextResponse(SUBTITLES["srt"](t)),
    "vtt": lambda t, request: PlainTextResponse(SUBTITLES["vtt"](t), media_type="text/vtt"),
    "verbose_json": lambda t, request: JSONResponse(verbose(t, request)),
}


# ---------------------------------------------------------------- speech


def int16(chunk: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2")


def pcm16(chunk: np.ndarray) -> bytes:
    return int16(chunk).tobytes()


def wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF): the data follows as it is made."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def stream_wav(chunks: Iterator[np.ndarray], sample_rate: int) -> Iterator[bytes]:
    yield wav_header(sample_rate)
    for chunk in chunks:
        yield pcm16(chunk)


def stream_pcm(chunks: Iterator[np.ndarray], sample_rate: int) -> Iterator[bytes]:
    for chunk in chunks:
        yield pcm16(chunk)


def whole_flac(chunks: Iterator[np.ndarray], sample_rate: int) -> Iterator[bytes]:
    """FLAC in one piece once synthesis ends: its header must hold the length for libsndfile to read it."""
    import soundfile as sf

    audio = np.concatenate([np.zeros(0, "<i2"), *(int16(c) for c in chunks)])  # the samples wav and pcm send
    out = io.BytesIO()
    sf.write(out, audio, sample_rate, format="FLAC", subtype="PCM_16")
    yield out.getvalue()


def _encoded(chunks: Iterator[np.ndarray], sample_rate: int, format: str, subtype: str,
             **settings: Any) -> Iterator[bytes]:
    """libsndfile's encoder fed chunk by chunk: each chunk's bytes are sent as soon as they are written."""
    import soundfile as sf

    out = io.BytesIO()
    sent = 0
    with sf.SoundFile(out, "w", sample_rate, 1, format=format, subtype=subtype, **settings) as encoder:
        for chunk in chunks:
            encoder.write(int16(chunk))
            if out.tell() > sent:
                yield out.getvalue()[sent:]
                sent = out.tell()
    yield out.getvalue()[sent:]  # the encoder's last frames


def stream_mp3(chunks: Iterator[np.ndarray], sample_rate: int) -> Iterator[bytes]:
    """Constant-bitrate MPEG layer III frames as they are encoded. Constant, because the length of a
    variable-rate stream is only known from the header frame that the encoder completes when it ends;
    a reader of the streamed bytes would take it from the first frame's rate and stop short."""
    return _encoded(chunks, sample_rate, "MP3", "MPEG_LAYER_III",
                    compression_level=0.5, bitrate_mode="CONSTANT")


OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def stream_opus(chunks: Iterator[np.ndarray], sample_rate: int) -> Iterator[bytes]:
    """Ogg Opus; a voice at a rate Opus does not take (Piper's 22,050 Hz) is resampled to the next one
    up, chunk by chunk with one resampler (soxr's stream), so chunk edges leave no seams."""
    rate = next((r for r in OPUS_RATES if r >= sample_rate), OPUS_RATES[-1])
    if rate != sample_rate:
        chunks = _resampled(chunks, sample_rate, rate)
    return _encoded(chunks, rate, "OGG", "OPUS")


def _resampled(chunks: Iterator[np.ndarray], rate: int, to: int) -> Iterator[np.ndarray]:
    import soxr

    resampler = soxr.ResampleStream(rate, to, 1, dtype="float32")
    for chunk in chunks:
        yield resampler.resample_chunk(np.asarray(chunk, np.float32), last=False)
    yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


# name -> (media type, encoder); mp3 first: OpenAI's default
SPEECH_FORMATS: dict[str, tuple[str, Callable[[Iterator[np.ndarray], int], Iterator[bytes]]]] = {
    "mp3": ("audio/mpeg", stream_mp3),
    "opus": ("audio/ogg", stream_opus),
    "wav": ("audio/wav", stream_wav),
    "pcm": ("audio/pcm", stream_pcm),
    "flac": ("audio/flac", whole_flac),
}
