"""Response bodies: transcripts in OpenAI's ``response_format``s, and speech as wav, pcm or flac.

Text, SRT and WebVTT are ``speechllm.apps.subtitles``' writers (the ``transcribe --format`` files).
Word timings (``timestamp_granularities[]=word``) are estimated: each segment's span is shared
among its words in proportion to their length; the decoders give segment times only.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator

import numpy as np
from starlette.responses import JSONResponse, PlainTextResponse, Response

from speechllm.apps.subtitles import FORMATS as SUBTITLES
from speechllm.transcriber import Segment, Transcript

LANGUAGE_NAMES = {"en": "english", "es": "spanish", "fr": "french", "de": "german", "it": "italian",
                  "pt": "portuguese"}


def estimated_words(segment: Segment) -> list[dict]:
    words = segment.text.split()
    if not words:
        return []
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)  # +1: the gap before a word
    shares = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
    edges = segment.start + (segment.end - segment.start) * shares
    return [{"word": w, "start": round(float(a), 3), "end": round(float(b), 3)}
            for w, a, b in zip(words, edges[:-1], edges[1:], strict=True)]


def verbose(t: Transcript, task: str, language: str | None, words: bool) -> dict:
    body = {"task": task, "language": LANGUAGE_NAMES.get(language or "en", language), "duration": t.duration,
            "text": t.text,
            "segments": [{"id": i, "seek": int(round(s.start * 100)), "start": s.start, "end": s.end,
                          "text": s.text, "temperature": 0.0, "stop": s.stop}
                         for i, s in enumerate(t.segments)]}
    if words:
        body["words"] = [w for s in t.segments for w in estimated_words(s)]
    return body


TranscriptFormat = Callable[[Transcript, str, str | None, bool], Response]

TRANSCRIPT_FORMATS: dict[str, TranscriptFormat] = {
    "json": lambda t, task, lang, words: JSONResponse({"text": t.text}),
    "text": lambda t, task, lang, words: PlainTextResponse(SUBTITLES["txt"](t)),
    "srt": lambda t, task, lang, words: PlainTextResponse(SUBTITLES["srt"](t)),
    "vtt": lambda t, task, lang, words: PlainTextResponse(SUBTITLES["vtt"](t), media_type="text/vtt"),
    "verbose_json": lambda t, task, lang, words: JSONResponse(verbose(t, task, lang, words)),
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


# name -> (media type, encoder)
SPEECH_FORMATS: dict[str, tuple[str, Callable[[Iterator[np.ndarray], int], Iterator[bytes]]]] = {
    "wav": ("audio/wav", stream_wav),
    "pcm": ("audio/pcm", stream_pcm),
    "flac": ("audio/flac", whole_flac),
}
