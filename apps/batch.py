"""Batch transcription job: inputs → JSON lines, one object per input, safe to kill and resume.

Each finished input is appended as one line with a single write + fsync, so a crash loses at
most the input in flight. ``resume`` keeps finished lines, drops failed or half-written ones,
and transcribes only what is left.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


@dataclass(frozen=True)
class BatchSummary:
    done: int
    failed: int
    skipped: int


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files as given; folders (recursive) and glob patterns expand to their audio files, sorted."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif not path.exists() and glob.has_magic(item):
            out += sorted(glob.glob(item, recursive=True))
        else:
            out.append(item)
    return out


def read_finished(output: Path) -> dict[str, dict]:
    """Rows already written without error; rewrites the file without broken or failed lines."""
    if not output.exists():
        return {}
    kept: dict[str, dict] = {}
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and "audio" in row and not row.get("error"):
            kept[row["audio"]] = row
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()),
                   encoding="utf-8")
    os.replace(tmp, output)
    return kept


def append_line(handle, row: dict) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def run_batch(transcriber, inputs: list[str], output: Path | None, resume: bool = False,
              progress: bool = True, echo: bool = True) -> BatchSummary:
    """Transcribe ``inputs`` with any object offering ``transcribe_many`` (see WhisperTranscriber)."""
    from tqdm import tqdm

    finished = read_finished(output) if (output and resume) else {}
    todo = [i for i in inputs if i not in finished]
    if output and not resume and output.exists():
        output.unlink()
    handle = open(output, "a", encoding="utf-8") if output else None
    done = failed = 0
    bar = tqdm(total=len(todo), unit="file", disable=not progress, file=sys.stderr)
    try:
        for source, result in transcriber.transcribe_many(todo):
            if isinstance(result, Exception):
                row = {"audio": source, "text": "", "error": str(result)}
                failed += 1
                print(f"failed: {result}", file=sys.stderr)
            else:
                row = {"audio": source, "text": result.text, "duration": round(result.duration, 3),
                       "segments": [{"start": s.start, "end": s.end, "text": s.text}
                                    for s in result.segments]}
                done += 1
                if echo:
                    print(f"{source}\t{result.text}" if len(inputs) > 1 else result.text)
            if handle:
                append_line(handle, row)
            bar.update(1)
    finally:
        bar.close()
        if handle:
            handle.close()
    return BatchSummary(done, failed, len(inputs) - len(todo))
