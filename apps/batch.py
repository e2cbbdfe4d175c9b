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
MANIFEST_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class BatchSummary:
    done: int
    failed: int
    skipped: int


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files as given; folders (recursive) and glob patterns expand to their audio files, sorted;
    a manifest (``.jsonl``) to the audio of its rows, in order, as resolved paths (relative paths
    in it are relative to its folder). A bad manifest row stops everything, ``FILE:LINE: reason``."""
    from speechllm.manifest import read_manifest

    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            out += [row.audio for row in read_manifest(path)]
        elif path.is_dir():
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


def shard(inputs: list[str], spec: str | None) -> list[str]:
    """``i/n`` (0-based i): every n-th input starting at i, the same split on every machine."""
    if not spec:
        return inputs
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected i/n, e.g. 0/4") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n")
    return inputs[index::count]


def run_batch(transcriber, inputs: list[str], output: Path | None, resume: bool = False,
              progress: bool = True, echo: bool = True, formats: tuple[str, ...] = (),
              format_dir: Path | None = None) -> BatchSummary:
    """Transcribe ``inputs`` with any object offering ``transcribe_many`` (see WhisperTranscriber).

    ``formats`` (txt, srt, vtt) are written per input into ``format_dir`` (default: beside
    ``output``).
    """
    import time

    from tqdm import tqdm

    from speechllm.apps.subtitles import write_transcript

    format_dir = format_dir or (output.parent if output else Path("."))
    started, audio_seconds = time.perf_counter(), 0.0

    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
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
                audio_seconds += result.duration
                for fmt in formats:
                    write_transcript(result, source, format_dir, fmt)
                if echo:
                    print(f"{source}\t{result.text}" if len(inputs) > 1 else result.text)
            if handle:
                append_line(handle, row)
            bar.update(1)
            speed = audio_seconds / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{audio_seconds / 3600:.2f} h audio, {speed:.1f}x real time")
    finally:
        bar.close()
        if handle:
            handle.close()
    return BatchSummary(done, failed, len(inputs) - len(todo))
