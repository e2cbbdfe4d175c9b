"""Data manifests: JSON lines, one utterance per line.

    {"audio": "clips/a.flac", "text": "hello", "task": "asr", "lang": "en", "duration": 2.1}

Relative audio paths are relative to the manifest's folder, so a corpus folder and its
manifest can be moved as a whole. Reading checks every row up front and reports every bad
row as ``FILE:LINE: reason`` in one go: a fine-tuning run should fail in the first second
with the whole list, not at hour three on row 40 000 with the first problem only.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from speechllm.files import atomic_open


class ManifestError(ValueError):
    """Bad rows in a manifest; ``errors`` holds one ``FILE:LINE: reason`` line per bad row."""

    def __init__(self, path: str | Path, errors: list[str]):
        self.path = str(path)
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} bad row(s) in {path}:\n" + "\n".join(self.errors))


@dataclass(frozen=True)
class TaskSpec:
    """What rows of a task must fill: each group in ``needs`` needs at least one non-empty field."""

    name: str
    needs: tuple[tuple[str, ...], ...]
    description: str = ""

    def missing(self, row: ManifestRow) -> list[str]:
        """The unmet groups, written for an error message (``'answer' or 'text'``)."""
        return [
            " or ".join(repr(name) for name in group)
            for group in self.needs
            if not any(_filled(getattr(row, name)) for name in group)
        ]


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


for _spec in (
    TaskSpec("asr", (("text",),), "speech recognition; text is the transcript"),
    TaskSpec("st", (("text",),), "speech translation; text is the translation"),
    TaskSpec("sqa", (("answer", "text"),), "spoken question answering; prompt is the question if not spoken"),
    TaskSpec("tts", (("text",),), "speech synthesis; text is what the audio says"),
    TaskSpec("instruct", (("prompt",), ("answer", "text")), "free instruction: prompt plus expected reply"),
):
    register_task(_spec)


@dataclass(frozen=True)
class ManifestRow:
    """One utterance. ``audio`` is an absolute path after :func:`read_manifest`; keys the
    format does not know are kept in ``extra`` and written back unchanged."""

    audio: str
    text: str | None = None
    task: str = "asr"
    prompt: str | None = None
    answer: str | None = None
    lang: str | None = None
    speaker: str | None = None
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


KNOWN_KEYS = tuple(f.name for f in fields(ManifestRow) if f.name != "extra")
_STRING_KEYS = ("text", "prompt", "answer", "lang")


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _parse(obj: Any, base: Path | None) -> tuple[ManifestRow | None, list[str]]:
    """A JSON value -> (row or None, reasons). ``base`` resolves relative audio paths."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {type(obj).__name__}"]
    reasons = []
    audio = obj.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        reasons.append("missing or empty 'audio'")
    task = obj.get("task", "asr")
    if not isinstance(task, str) or task not in TASKS:
        reasons.append(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    for key in _STRING_KEYS:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            reasons.append(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    speaker = obj.get("speaker")
    if isinstance(speaker, int) and not isinstance(speaker, bool):
        speaker = str(speaker)
    elif speaker is not None and not isinstance(speaker, str):
        reasons.append(f"'speaker' must be a string, got {type(speaker).__name__}")
    duration = obj.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            reasons.append(f"'duration' must be a number of seconds, got {duration!r}")
        elif not math.isfinite(duration) or duration < 0:
            reasons.append(f"'duration' must be a finite number >= 0, got {duration!r}")
    if reasons:
        return None, reasons
    path = Path(audio)
    if base is not None and not path.is_absolute():
        path = base / path
    row = ManifestRow(
        audio=os.path.normpath(path) if base is not None else audio,
        text=obj.get("text"),
        task=task,
        prompt=obj.get("prompt"),
        answer=obj.get("answer"),
        lang=obj.get("lang"),
        speaker=speaker,
        duration=float(duration) if duration is not None else None,
        extra={k: v for k, v in obj.items() if k not in KNOWN_KEYS},
    )
    missing = TASKS[task].missing(row)
    if missing:
        return None, [f"task {task!r} needs {' and '.join(missing)}"]
    return row, []


def _check_audio(row: ManifestRow) -> tuple[ManifestRow, str | None]:
    """Header check; fills a missing duration from the file."""
    from speechllm.audio import AudioError, audio_info

    try:
        info = audio_info(row.audio)
    except AudioError as exc:
        return row, f"audio {row.audio}: {exc.reason}"
    if info.frames == 0:
        return row, f"audio {row.audio}: no audio samples (0 s)"
    return (replace(row, duration=info.duration) if row.duration is None else row), None


def scan_manifest(
    path: str | Path, check_audio: bool = False
) -> Iterator[tuple[str, ManifestRow | None, str | None]]:
    """``(FILE:LINE, row, None)`` for each good row and ``(FILE:LINE, None, "FILE:LINE: reason")``
    for each bad one, in file order, for jobs that report bad rows where they are and go on.

    Blank lines are skipped. ``check_audio`` also opens each audio header (missing, unreadable or
    empty files become problems) and fills in missing durations.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'is a directory' if path.is_dir() else 'no such manifest'}")
    base = path.parent.absolute()
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):  # audio or another binary file: one problem, not one per "line"
            yield str(path), None, f"{path}: not a text file (a manifest is JSON lines, UTF-8 text)"
            return
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, None, f"{where}: not UTF-8 text (byte {exc.start})"
                continue
            line = line.removeprefix("\ufeff") if lineno == 1 else line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, None, f"{where}: bad JSON ({exc.msg}, column {exc.colno})"
                continue
            row, reasons = _parse(obj, base)
            if row is not None and check_audio:
                row, reason = _check_audio(row)
                reasons = [reason] if reason else []
            if reasons:
                yield where, None, f"{where}: {'; '.join(reasons)}"
            else:
                yield where, row, None


def validate_manifest(
    path: str | Path, check_audio: bool = False
) -> tuple[list[ManifestRow], list[str]]:
    """Every good row and every problem (``FILE:LINE: reason``), for jobs that keep going; see
    :func:`scan_manifest`."""
    rows: list[ManifestRow] = []
    errors: list[str] = []
    for _, row, problem in scan_manifest(path, check_audio=check_audio):
        if problem is None:
            rows.append(row)
        else:
            errors.append(problem)
    return rows, errors


def read_manifest(path: str | Path, check_audio: bool = False) -> list[ManifestRow]:
    """All rows, or one :class:`ManifestError` listing every bad row."""
    rows, errors = validate_manifest(path, check_audio=check_audio)
    if errors:
        raise ManifestError(path, errors)
    return rows


def check_row(row: ManifestRow) -> list[str]:
    """Reasons an in-memory row would be rejected on reading (empty when it is fine)."""
    try:
        obj = row_to_dict(row)
    except ValueError as exc:
        return [str(exc)]
    return _parse(obj, None)[1]


def row_to_dict(row: ManifestRow, base: str | Path | None = None) -> dict[str, Any]:
    """The JSON object for ``row``: ``None`` fields left out, ``extra`` keys last.

    With ``base`` (the manifest's folder), audio under it is stored relative to it.
    """
    clash = sorted(set(row.extra) & set(KNOWN_KEYS))
    if clash:
        raise ValueError(f"extra key(s) {', '.join(clash)} shadow manifest fields")
    obj = {k: getattr(row, k) for k in KNOWN_KEYS if getattr(row, k) is not None}
    if base is not None:
        obj["audio"] = _relative(row.audio, Path(base))
    return {**obj, **row.extra}


def _relative(audio: str, base: Path) -> str:
    path = Path(os.path.abspath(audio))
    try:
        return path.relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(path)


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> int:
    """Write ``rows`` atomically (temp file in the same folder, fsync, rename); returns the count.

    Audio under the manifest's folder is stored relative to it, other audio as an absolute
    path (a relative ``audio`` in memory means relative to the current folder). Every row is
    checked as :func:`read_manifest` would; on any bad row or failure the old file stays as
    it was and no temp file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.absolute()
    errors: list[str] = []
    count = 0
    with atomic_open(path, "w", newline="\n") as f:
        for count, row in enumerate(rows, 1):
            reasons = check_row(row)
            if not reasons:
                try:
                    line = json.dumps(row_to_dict(row, base), ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    reasons = [f"cannot be written as JSON ({exc})"]
            if reasons:
                errors.append(f"row {count}: {'; '.join(reasons)}")
            elif not errors:
                f.write(line + "\n")
        if errors:
            raise ManifestError(path, errors)
    return count


@dataclass(frozen=True)
class ManifestSummary:
    rows: int
    seconds: float
    no_duration: int
    tasks: dict[str, int]
    langs: dict[str, int]
    speakers: int

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def describe(self) -> str:
        text = f"{self.rows} rows, {self.hours:.2f} h"
        if 0 < self.seconds < 360:  # "0.00 h" says nothing for a small set
            text += f" ({self.seconds:.1f} s)"
        if self.no_duration:
            text += f" ({self.no_duration} rows without duration)"
        text += "; tasks: " + (", ".join(f"{k}={v}" for k, v in self.tasks.items()) or "none")
        if self.langs:
            text += "; langs: " + ", ".join(f"{k}={v}" for k, v in self.langs.items())
        if self.speakers:
            text += f"; {self.speakers} speakers"
        return text


def summarize(rows: Iterable[ManifestRow]) -> ManifestSummary:
    rows = list(rows)
    durations = [r.duration for r in rows if r.duration is not None]
    return ManifestSummary(
        rows=len(rows),
        seconds=float(sum(durations)),
        no_duration=len(rows) - len(durations),
        tasks=dict(Counter(r.task for r in rows).most_common()),
        langs=dict(Counter(r.lang for r in rows if r.lang).most_common()),
        speakers=len({r.speaker for r in rows if r.speaker}),
    )
