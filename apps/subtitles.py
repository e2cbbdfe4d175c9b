"""Transcript writers for ``speechllm transcribe --format``: plain text, SRT and WebVTT."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from speechllm.transcriber import Transcript


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_txt(t: Transcript) -> str:
    return t.text + "\n"


def to_srt(t: Transcript) -> str:
    cues = [s for s in t.segments if s.text]
    return "\n".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
                     for i, s in enumerate(cues, 1))


def to_vtt(t: Transcript) -> str:
    cues = [s for s in t.segments if s.text]
    return "WEBVTT\n\n" + "\n".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n"
                                    for s in cues)


FORMATS: dict[str, Callable[[Transcript], str]] = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt}


def write_transcript(transcript: Transcript, audio: str, folder: Path, fmt: str) -> Path:
    """Write ``<folder>/<audio stem>.<fmt>`` atomically; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(audio).stem}.{fmt}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(FORMATS[fmt](transcript), encoding="utf-8")
    os.replace(tmp, path)
    return path
