"""Transcript writers for ``speechllm transcribe --format``: plain text, SRT and WebVTT (cues
split for reading by :mod:`speechllm.apps.cues`), and as openai-whisper writes them, TSV (segments in
milliseconds) and JSON (the transcript's ``--output`` row)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from speechllm.apps.cues import DEFAULT, Cue, CueOptions, highlighted, split_cues
from speechllm.files import atomic_write_text
from speechllm.transcriber import Transcript


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_txt(t: Transcript, options: CueOptions = DEFAULT) -> str:
    return t.text + "\n"


def _cues(t: Transcript, options: CueOptions) -> list[Cue]:
    cues = split_cues((s for s in t.segments if s.text), options)
    if options.highlight_words:
        cues = [c for cue in cues for c in highlighted(cue)]
    return cues


def to_srt(t: Transcript, options: CueOptions = DEFAULT) -> str:
    return "\n".join(f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n"
                     for i, c in enumerate(_cues(t, options), 1))


def to_vtt(t: Transcript, options: CueOptions = DEFAULT) -> str:
    return "WEBVTT\n\n" + "\n".join(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{c.text}\n"
                                    for c in _cues(t, options))


def to_tsv(t: Transcript, options: CueOptions = DEFAULT) -> str:
    """``start<TAB>end<TAB>text`` per segment, times in whole milliseconds (openai-whisper's tsv)."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{' '.join(s.text.split())}"
            for s in t.segments if s.text.strip()]
    return "start\tend\ttext\n" + "".join(row + "\n" for row in rows)


def to_json(t: Transcript, options: CueOptions = DEFAULT) -> str:
    return json.dumps(t.to_row(), ensure_ascii=False) + "\n"


FORMATS: dict[str, Callable[[Transcript, CueOptions], str]] = {
    "txt": to_txt, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv, "json": to_json}


def transcript_names(sources: list[str]) -> tuple[dict[str, str], str]:
    """The file stem each input's transcript gets, and a one-line note when some had to change.

    The stem is the audio's own (``talk.wav`` → ``talk``), unless different files share it
    (``a/clip.wav`` and ``b/clip.wav``): those get as many of their folders in front as tells them
    apart (``a_clip``, ``b_clip``), and a number where folders cannot (``a/clip.wav`` and
    ``a/clip.mp3``: ``clip``, ``clip_2``). Nothing is overwritten; the same file named twice keeps
    one name. Names are compared without case (macOS and Windows folders).
    """
    files: dict[str, str] = {}  # resolved path -> first spelling, in input order
    for source in sources:
        files.setdefault(os.path.realpath(source), source)
    groups: dict[str, list[str]] = {}
    for real in files:
        groups.setdefault(Path(real).stem.lower(), []).append(real)
    names = {real: Path(real).stem for real in files}
    for group in groups.values():
        if len(group) > 1:
            names.update(_apart(group))
    seen: set[str] = set()
    for real in files:  # numbers: what folders could not tell apart, or a name another file has
        stem, n = names[real], 2
        while names[real].lower() in seen:
            names[real], n = f"{stem}_{n}", n + 1
        seen.add(names[real].lower())
    renamed = [f"{files[r]} -> {n}" for r, n in names.items() if n != Path(r).stem]
    note = ""
    if renamed:
        shown = ", ".join(renamed[:4]) + (f" and {len(renamed) - 4} more" if len(renamed) > 4 else "")
        note = f"inputs share a file name; --format files named {shown}"
    return {source: names[os.path.realpath(source)] for source in sources}, note


def _apart(group: list[str]) -> dict[str, str]:
    """``folder_..._stem`` for files of one stem, with the fewest folders that tell most apart."""
    def named(depth: int) -> dict[str, str]:
        return {r: "_".join([*Path(r).parent.parts[1:][-depth:], Path(r).stem]) if depth else Path(r).stem
                for r in group}

    deepest = max(len(Path(r).parent.parts) - 1 for r in group)
    best = max(range(deepest + 1), key=lambda d: (len({n.lower() for n in named(d).values()}), -d))
    return named(best)


def write_transcript(transcript: Transcript, audio: str, folder: Path, fmt: str,
                     stem: str | None = None, cues: CueOptions = DEFAULT) -> Path:
    """Write ``<folder>/<stem>.<fmt>`` atomically (default stem: the audio's); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or Path(audio).stem}.{fmt}"
    atomic_write_text(path, FORMATS[fmt](transcript, cues))
    return path
