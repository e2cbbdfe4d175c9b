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

from speechllm.audio import AUDIO_SUFFIXES, is_uri  # suffixes: libsndfile's formats, PyAV's containers
from speechllm.files import atomic_write_text

MANIFEST_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class BatchSummary:
    done: int
    failed: int
    skipped: int


@dataclass(frozen=True)
class BadInput:
    """An input known to fail before any model runs: a bad manifest row (``source`` is
    ``FILE:LINE``), a folder without audio, a pattern matching nothing, an unreadable file. It
    becomes an error row in its place; the batch goes on."""

    source: str
    reason: str  # the whole one-line message, naming the input


def expand_inputs(items: Iterable[str], uris: bool = False) -> list[str | BadInput]:
    """Files as given; folders (recursive) and glob patterns expand to their audio files, sorted;
    a manifest (``.jsonl``) to the audio of its rows, in order, as resolved paths (relative paths
    in it are relative to its folder); with ``uris`` (``--ray``), an object-store URI to the audio
    files under it. What cannot give audio stays in its place as a :class:`BadInput`: a bad
    manifest row (``FILE:LINE: reason``), a folder with no audio, a pattern that matches nothing,
    a URI without ``--ray``."""
    from speechllm.manifest import scan_manifest

    out: list[str | BadInput] = []
    for item in items:
        path = Path(item)
        if is_uri(item):
            if not uris:
                out.append(BadInput(item, f"{item}: URIs (s3://, gs://, ...) are read through Ray Data: "
                                          "run with --ray"))
                continue
            from speechllm.apps.ray_backend import expand_uri

            found = expand_uri(item)
            out += found if isinstance(found, list) else [BadInput(item, found)]
            continue
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            before = len(out)
            out += [row.audio if row is not None else BadInput(where, problem)
                    for where, row, problem in scan_manifest(path)]
            if len(out) == before:
                out.append(BadInput(item, f"{item}: no rows in this manifest"))
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*")
                           if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            out += found or [BadInput(item, f"{item}: no audio files in this folder (looked for "
                                            f"{', '.join(AUDIO_SUFFIXES)})")]
        elif not path.exists() and glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            out += found or [BadInput(item, f"{item}: no files match this pattern")]
        else:
            out.append(item)
    return out


def precheck(inputs: list[str | BadInput]) -> list[str | BadInput]:
    """Each file whose header cannot be used (missing, empty, not audio, absurd sample rate) as a
    :class:`BadInput` with the same message the transcriber would give: no model is needed to
    know it, and none is loaded when nothing else is left."""
    from speechllm.audio import AudioError, check_audio_file

    verdict: dict[str, BadInput | None] = {}
    out: list[str | BadInput] = []
    for item in inputs:
        if isinstance(item, str) and not is_uri(item):  # a URI is read, and checked, by a Ray worker
            if item not in verdict:
                try:
                    check_audio_file(item)
                    verdict[item] = None
                except AudioError as exc:
                    verdict[item] = BadInput(item, str(exc))
            item = verdict[item] or item
        out.append(item)
    return out


def same_file(audio: str) -> str:
    """The key resume matches inputs by: ``./clip.wav`` and ``/abs/clip.wav`` are one file."""
    return audio if is_uri(audio) else os.path.realpath(audio)


def read_finished(output: Path) -> dict[str, dict]:
    """Rows already written without error, by :func:`same_file` of their audio; rewrites the file
    without broken, failed or repeated lines (one file named two ways keeps its first row)."""
    if not output.exists():
        return {}
    kept: dict[str, dict] = {}
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("audio"), str) and not row.get("error"):
            kept.setdefault(same_file(row["audio"]), row)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()))
    return kept


def append_line(handle, row: dict) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def shard(inputs: list, spec: str | None) -> list:
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


class SecondsProgress:
    """The progress bar in seconds of audio, not files: it moves as each decoded segment reaches
    further into its recording (``on_segment``), and a finished or failed input takes it to that
    input's end. The total is what the headers say; a header that does not know its length
    (some webm/mp3) adds its recording's length as the segments reveal it. ``verbose`` prints
    every segment as it is decoded."""

    def __init__(self, sources: list[str], enabled: bool, verbose: bool = False, named: bool = False):
        from tqdm import tqdm

        from speechllm.audio import AudioError, check_audio_file

        self.length: dict[str, float] = {}
        for source in sources if enabled else ():  # headers are read again only for a bar to draw
            try:
                self.length[source] = 0.0 if is_uri(source) else max(check_audio_file(source).duration, 0.0)
            except AudioError:
                self.length[source] = 0.0
        self.heard: dict[str, float] = {}
        self.verbose, self.named = verbose, named
        self.bar = tqdm(total=sum(self.length.values()), unit="s", disable=not enabled,
                        file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio "
                                                    "[{elapsed}<{remaining}{postfix}]")

    def _reach(self, source: str, seconds: float) -> None:
        before = self.heard.get(source, 0.0)
        if seconds <= before:
            return
        self.heard[source] = seconds
        beyond = seconds - max(self.length.get(source, 0.0), before)  # past what its header said
        if beyond > 0:
            self.bar.total += beyond
        self.bar.total = max(self.bar.total, self.bar.n + seconds - before)  # no float overshoot
        self.bar.update(seconds - before)

    def on_segment(self, source, segment) -> None:
        self._reach(str(source), segment.end)
        if self.verbose:
            from speechllm.apps.subtitles import _clock

            where = f"{source} " if self.named else ""
            print(f"{where}[{_clock(segment.start, '.')} --> {_clock(segment.end, '.')}] {segment.text}",
                  flush=True)

    def finished(self, source: str, duration: float | None) -> None:
        self._reach(source, max(duration or 0.0, self.length.get(source, 0.0)))

    def close(self) -> None:
        self.bar.close()


def _segment_callback(transcriber) -> bool:
    """Whether ``transcriber.transcribe_many`` takes ``on_segment`` (test fakes and older ones do not)."""
    import inspect

    try:
        return "on_segment" in inspect.signature(transcriber.transcribe_many).parameters
    except (TypeError, ValueError):
        return False


def run_batch(transcriber, inputs: list[str | BadInput], output: Path | None, resume: bool = False,
              progress: bool = True, echo: bool = True, formats: tuple[str, ...] = (),
              format_dir: Path | None = None, verbose: bool = False, cues=None) -> BatchSummary:
    """Transcribe ``inputs`` with any object offering ``transcribe_many`` (see WhisperTranscriber),
    or with a function returning one: it is called only when some input is left to do, before the
    output is touched. :class:`BadInput` items become error rows without the model.

    ``formats`` (txt, srt, vtt) are written per input into ``format_dir`` (default: beside
    ``output``); inputs whose names clash get names that tell them apart (see
    :func:`~speechllm.apps.subtitles.transcript_names`), said in one line on stderr; ``cues``
    (:class:`~speechllm.apps.cues.CueOptions`) sizes their subtitle cues.
    """
    import time

    from speechllm.apps.subtitles import transcript_names, write_transcript

    format_dir = format_dir or (output.parent if output else Path("."))
    started, audio_seconds = time.perf_counter(), 0.0
    names: dict[str, str] = {}
    if formats:
        names, note = transcript_names([i for i in inputs if isinstance(i, str)])
        if note:
            print(f"note: {note}", file=sys.stderr)

    finished = read_finished(output) if (output and resume) else {}
    todo = [i for i in inputs if isinstance(i, BadInput) or same_file(i) not in finished]
    sources = [i for i in todo if isinstance(i, str)]
    if sources and not hasattr(transcriber, "transcribe_many"):
        transcriber = transcriber()  # loads the model; a failure leaves the output as it was
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
    if output and not resume and output.exists():
        output.unlink()
    handle = open(output, "a", encoding="utf-8") if output else None
    done = failed = 0
    bar = SecondsProgress(sources, progress, verbose=verbose, named=len(inputs) > 1)
    by_segment = {"on_segment": bar.on_segment} if sources and _segment_callback(transcriber) else {}
    results = transcriber.transcribe_many(sources, **by_segment) if sources else iter(())
    try:
        for item in todo:
            if isinstance(item, BadInput):
                source, result = item.source, item.reason
            else:
                source, result = next(results)
            if isinstance(result, (Exception, str)):
                row = {"audio": source, "text": "", "error": str(result)}
                failed += 1
                print(f"failed: {result}", file=sys.stderr)
            else:
                row = {"audio": source, **result.to_row()}
                done += 1
                audio_seconds += result.duration
                for fmt in formats:
                    write_transcript(result, source, format_dir, fmt, stem=names.get(source),
                                     **({"cues": cues} if cues is not None else {}))
                if echo and not verbose:  # --verbose printed its segments already
                    print(f"{source}\t{result.text}" if len(inputs) > 1 else result.text)
            if handle:
                append_line(handle, row)
            bar.finished(source, None if isinstance(result, (Exception, str)) else result.duration)
            speed = audio_seconds / max(time.perf_counter() - started, 1e-9)
            bar.bar.set_postfix_str(f"{done + failed}/{len(todo)} files, {speed:.1f}x real time")
    finally:
        bar.close()
        if handle:
            handle.close()
    return BatchSummary(done, failed, len(inputs) - len(todo))
