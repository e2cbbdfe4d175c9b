"""Importers: common corpus layouts -> manifest rows (``speechllm data import FORMAT SRC``).

Each importer only reads its layout into :class:`Entry` items (audio path, transcript,
speaker, where it came from) plus problem lines; :func:`import_corpus` then checks the audio
the same way for every format (exists, readable, duration) and builds the rows. A bad item
never stops an import: it becomes one ``FILE:LINE: reason`` (or ``AUDIOPATH: reason``) line
and the rest goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from speechllm.manifest import TASKS, ManifestRow, check_row

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")
PROGRESS_MIN_FILES = 200  # below this a progress bar is only noise
PROBE_THREADS = 8  # header reads are I/O bound (network disks); threads overlap them


@dataclass(frozen=True)
class ImportOptions:
    task: str = "asr"
    lang: str | None = None  # overrides the corpus' own language (Common Voice locale)
    duration: bool = True  # read each audio header for its duration
    clips: Path | None = None  # commonvoice: folder of the clips
    progress: bool = True


@dataclass(frozen=True)
class Entry:
    """One utterance found in a layout; ``origin`` (``FILE:LINE`` or the audio path) prefixes
    any problem with its audio."""

    audio: Path
    text: str
    origin: str
    speaker: str | None = None
    lang: str | None = None


@dataclass(frozen=True)
class Scan:
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    rows: list[ManifestRow]
    problems: list[str]  # one line per item left out


@dataclass(frozen=True)
class Importer:
    name: str
    scan: Callable[[Path, ImportOptions], Scan]
    help: str
    options: frozenset[str] = frozenset()  # ImportOptions fields only this layout uses


IMPORTERS: dict[str, Importer] = {}
_LAYOUT_OPTIONS = ("clips",)


def importer(name: str, help: str, options: tuple[str, ...] = ()):
    """Register a scan function under ``name``."""

    def add(scan: Callable[[Path, ImportOptions], Scan]):
        IMPORTERS[name] = Importer(name, scan, help, frozenset(options))
        return scan

    return add


# ---------------------------------------------------------------- shared readers


def _read_lines(path: Path, scan: Scan) -> list[str] | None:
    """The file's lines (BOM and CR stripped) or None, with the reason added to ``scan``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        scan.problems.append(f"{path}: not UTF-8 text (byte {exc.start})")
        return None
    except OSError as exc:
        scan.problems.append(f"{path}: cannot read ({exc.strerror or exc})")
        return None
    return [line.rstrip("\r") for line in text.split("\n")]


def _id_lines(path: Path, scan: Scan) -> Iterator[tuple[str, str, str]]:
    """``ID REST`` lines as (``FILE:LINE``, id, rest); blank lines skipped, rest may be ''."""
    for lineno, line in enumerate(_read_lines(path, scan) or [], 1):
        parts = line.strip().split(maxsplit=1)
        if parts:
            yield f"{path}:{lineno}", parts[0], parts[1].strip() if len(parts) > 1 else ""


def _need_dir(src: Path, what: str) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (expected {what})")


def _find_audio(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    return next((folder / f"{stem}{ext}" for ext in exts if (folder / f"{stem}{ext}").is_file()), None)


# ---------------------------------------------------------------- layouts


@importer("librispeech", "ROOT/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt, audio UTTID.flac (or .wav)")
def scan_librispeech(src: Path, opts: ImportOptions) -> Scan:
    _need_dir(src, "a LibriSpeech-style tree")
    transcripts = sorted(src.rglob("*.trans.txt"))
    if not transcripts:
        raise ValueError(f"{src}: no *.trans.txt files found; is this a LibriSpeech-style tree?")
    scan = Scan()
    for trans in transcripts:
        speaker = trans.parent.parent.name or None
        for where, uttid, text in _id_lines(trans, scan):
            if not text:
                scan.problems.append(f"{where}: empty transcript for {uttid}")
                continue
            audio = _find_audio(trans.parent, uttid, (".flac", ".wav"))
            if audio is None:
                scan.problems.append(f"{where}: no audio {uttid}.flac or {uttid}.wav next to the transcript")
                continue
            scan.entries.append(Entry(audio, text, where, speaker=speaker))
    return scan


@importer(
    "commonvoice",
    "Common Voice TSV (validated.tsv, train.tsv, ...; SRC may be its folder) with clips/ beside it",
    options=("clips",),
)
def scan_commonvoice(src: Path, opts: ImportOptions) -> Scan:
    tsv = src / "validated.tsv" if src.is_dir() else src
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: no such TSV file (pass the .tsv itself)")
    clips = Path(opts.clips) if opts.clips else tsv.parent / "clips"
    if not clips.is_dir():
        raise FileNotFoundError(f"{clips}: clips folder not found (pass --clips DIR)")
    scan = Scan()
    lines = _read_lines(tsv, scan)
    if lines is None:
        return scan
    columns = lines[0].split("\t") if lines else []
    missing = [c for c in ("path", "sentence") if c not in columns]
    if missing:
        found = ", ".join(columns)
        raise ValueError(f"{tsv}:1: header lacks column(s) {', '.join(missing)} (found: {found})")
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        where = f"{tsv}:{lineno}"
        values = line.split("\t")
        if len(values) != len(columns):
            scan.problems.append(f"{where}: expected {len(columns)} tab-separated fields, got {len(values)}")
            continue
        record = {k: v.strip() for k, v in zip(columns, values, strict=True)}
        if not record["path"]:
            scan.problems.append(f"{where}: empty 'path'")
        elif not record["sentence"]:
            scan.problems.append(f"{where}: empty transcript for {record['path']}")
        else:
            scan.entries.append(
                Entry(
                    clips / record["path"],
                    record["sentence"],
                    where,
                    speaker=record.get("client_id") or None,
                    lang=record.get("locale") or None,
                )
            )
    return scan


def _kaldi_path(value: str, data_dir: Path) -> Path:
    """Kaldi resolves relative paths against the recipe folder (the current one); fall back
    to the data dir for self-contained corpora."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path.absolute()
    return data_dir.absolute() / path


@importer("kaldi", "Kaldi data dir: wav.scp (UTTID PATH) + text (UTTID TRANSCRIPT), optional utt2spk")
def scan_kaldi(src: Path, opts: ImportOptions) -> Scan:
    _need_dir(src, "a Kaldi data dir")
    segments = src / "segments"
    if segments.exists():
        raise ValueError(
            f"{segments}:1: 'segments' files are not supported; cut the segments into their own "
            "audio files (e.g. Kaldi's extract-segments) and list those in wav.scp"
        )
    wav_scp, text_file = src / "wav.scp", src / "text"
    for needed in (wav_scp, text_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: not found (a Kaldi data dir needs wav.scp and text)")
    scan = Scan()
    wavs: dict[str, tuple[Path, str]] = {}
    rejected: set[str] = set()  # already reported; no second "not in wav.scp" line for them
    for where, utt, value in _id_lines(wav_scp, scan):
        if utt in wavs or utt in rejected:
            scan.problems.append(f"{where}: duplicate utterance {utt}")
        elif not value:
            scan.problems.append(f"{where}: no audio path for {utt}")
            rejected.add(utt)
        elif value.endswith("|"):
            scan.problems.append(
                f"{where}: piped command entries ('... |') are not supported ({utt}); "
                "write the audio to files and list their paths"
            )
            rejected.add(utt)
        else:
            wavs[utt] = (_kaldi_path(value, src), where)
    speakers: dict[str, str] = {}
    if (src / "utt2spk").is_file():
        for where, utt, spk in _id_lines(src / "utt2spk", scan):
            if utt in speakers:
                scan.problems.append(f"{where}: duplicate utterance {utt}")
            elif spk:
                speakers[utt] = spk
    seen: set[str] = set()
    for where, utt, transcript in _id_lines(text_file, scan):
        if utt in seen:
            scan.problems.append(f"{where}: duplicate utterance {utt}")
            continue
        seen.add(utt)
        if utt in rejected:
            continue
        if utt not in wavs:
            scan.problems.append(f"{where}: utterance {utt} has no entry in wav.scp")
        elif not transcript:
            scan.problems.append(f"{where}: empty transcript for {utt}")
        else:
            audio, audio_where = wavs[utt]
            scan.entries.append(Entry(audio, transcript, audio_where, speaker=speakers.get(utt)))
    for utt, (_, where) in wavs.items():
        if utt not in seen:
            scan.problems.append(f"{where}: utterance {utt} has no transcript in {text_file.name}")
    return scan


@importer("folder", "a folder (recursive) of audio files (.wav .flac .ogg .mp3), each with a same-named .txt")
def scan_folder(src: Path, opts: ImportOptions) -> Scan:
    _need_dir(src, "a folder of audio files with .txt transcripts")
    audios = sorted(
        p
        for p in src.rglob("*")
        if p.suffix.lower() in AUDIO_EXTS
        and not any(part.startswith(".") for part in p.relative_to(src).parts)  # ._x.wav, .cache/
        and p.is_file()
    )
    if not audios:
        raise ValueError(f"{src}: no audio files ({' '.join(AUDIO_EXTS)}) found")
    scan = Scan()
    for audio in audios:
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            scan.problems.append(f"{audio}: no transcript {txt.name} next to it")
            continue
        lines = _read_lines(txt, scan)
        if lines is None:
            continue
        text = " ".join(" ".join(lines).split())
        if not text:
            scan.problems.append(f"{txt}: empty transcript")
            continue
        scan.entries.append(Entry(audio, text, str(audio)))
    return scan


# ---------------------------------------------------------------- the common part


def _probe(entry: Entry, duration: bool) -> tuple[float | None, str | None]:
    """(duration or None, problem or None) for one entry's audio."""
    if not duration:
        return None, (None if entry.audio.is_file() else "no such file")
    from speechllm.audio import AudioError, audio_info

    try:
        info = audio_info(entry.audio)
    except AudioError as exc:
        return None, exc.reason
    if info.frames == 0:
        return None, "no audio samples (0 s)"
    return round(info.duration, 4), None


def _probe_all(entries: list[Entry], opts: ImportOptions) -> list[tuple[float | None, str | None]]:
    probe = partial(_probe, duration=opts.duration)
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        results = pool.map(probe, entries)
        if opts.progress and len(entries) >= PROGRESS_MIN_FILES:
            from tqdm import tqdm

            results = tqdm(results, total=len(entries), desc="checking audio", unit="file", file=sys.stderr)
        return list(results)


def _check_options(fmt: str, opts: ImportOptions) -> Importer:
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(IMPORTERS)})")
    found = IMPORTERS[fmt]
    for name in _LAYOUT_OPTIONS:
        if getattr(opts, name) is not None and name not in found.options:
            raise ValueError(f"--{name} does not apply to {fmt}")
    if opts.task not in TASKS:
        raise ValueError(f"unknown task {opts.task!r} (known: {', '.join(TASKS)})")
    unmet = check_row(ManifestRow(audio="probe", text="probe", task=opts.task))
    if unmet:
        raise ValueError(f"--task {opts.task}: {unmet[0]}, but importers fill only 'text'")
    return found


def import_corpus(fmt: str, src: str | Path, opts: ImportOptions | None = None) -> ImportResult:
    """Scan ``src`` as layout ``fmt`` and check every audio file; good rows plus problem lines.

    Raises (ValueError/FileNotFoundError) only when the layout as a whole is unusable.
    """
    opts = opts or ImportOptions()
    found = _check_options(fmt, opts)
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    scan = found.scan(src, opts)
    rows, problems = [], list(scan.problems)
    for entry, (duration, problem) in zip(scan.entries, _probe_all(scan.entries, opts), strict=True):
        if problem is not None:
            where = "" if entry.origin == str(entry.audio) else f" (audio {entry.audio})"
            problems.append(f"{entry.origin}: {problem}{where}")
            continue
        rows.append(
            ManifestRow(
                audio=str(entry.audio.absolute()),
                text=entry.text,
                task=opts.task,
                lang=opts.lang or entry.lang,
                speaker=entry.speaker,
                duration=duration,
            )
        )
    return ImportResult(rows, problems)
