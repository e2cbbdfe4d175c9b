"""``speechllm data synth``: build a recipe's corpus, in shards, on a process pool, resumably.

    speechllm data synth --recipe asr --hours 1 --out corpora/asr [--jobs 2] [--seed 0]

Layout of ``OUT``::

    audio/fast-00000/asr-0000000.flac  16 kHz FLAC (no WAV is kept; temp files are renamed in place)
    audio/fast-00000/shard.jsonl       the shard's rows (written atomically after all its audio)
    audio/fast-00000/done.json         the done marker: the shard's fingerprint, written last
    audio/neural-00000/...             Piper shards (one onnxruntime session, seeded, per shard)
    train.jsonl dev.jsonl test.jsonl   one manifest per split, written when every shard is done
    stats.json                         hours, utterances and speakers per split, build throughput

A shard is reused when its ``done.json`` carries the fingerprint of the items it should
hold (recipe, seed, texts, speakers); anything else in its folder (an interrupted run, a
different seed or size) is deleted and the shard is made again. Manifests list only rows of
finished shards, so they never point at a half-written file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechllm.audio import SAMPLE_RATE, write_audio
from speechllm.data_recipes.recipes import RECIPES, SPLITS, Item, get_recipe, plan
from speechllm.files import atomic_write_json
from speechllm.manifest import ManifestRow, read_manifest, write_manifest
from speechllm.tts import speakers

SYNTH_VERSION = 1  # part of every shard fingerprint: bump when the audio for an item changes
SHARD_SIZE = 50
MIN_SECONDS = 0.2  # shorter audio (a synthesizer that said nothing) is left out
_SHARD_NAME = re.compile(r"^[a-z]+-\d{5}$")


@dataclass(frozen=True)
class ShardJob:
    name: str
    folder: str
    items: tuple[Item, ...]
    fingerprint: str


@dataclass(frozen=True)
class ShardResult:
    name: str
    utterances: int
    seconds: float
    skipped: tuple[str, ...]
    built: bool  # False when an earlier run's shard was reused
    cpu_seconds: float = 0.0  # worker + synthesizer processes


@dataclass(frozen=True)
class BuildResult:
    out: Path
    stats: dict[str, Any]
    shards_built: int
    shards_reused: int


def shard_group(item: Item) -> str:
    """Items are sharded by group so the slow neural voice's session (and its seed) is set up
    once per shard of its own, and its long shards can be started first."""
    return "neural" if item.speaker.engine == "piper" else "fast"


def make_shards(items: list[Item], root: Path, shard_size: int) -> list[ShardJob]:
    """Shards ``GROUP-NNNNN`` of up to ``shard_size`` items, in plan order within each group
    (so a bigger ``--hours`` only adds shards at the end of each group); slow groups first."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[shard_group(item)].append(item)
    jobs = []
    for group in sorted(groups, key=lambda g: (g != "neural", g)):
        members = groups[group]
        for n, start in enumerate(range(0, len(members), max(1, shard_size))):
            chunk = tuple(members[start : start + shard_size])
            name = f"{group}-{n:05d}"
            jobs.append(ShardJob(name, str(root / name), chunk, fingerprint(chunk)))
    return jobs


def fingerprint(items: Iterable[Item]) -> str:
    payload = [SYNTH_VERSION] + [
        [
            i.id,
            i.split,
            i.task,
            i.speaker.id,
            i.say,
            i.text,
            i.prompt,
            i.answer,
            i.lang,
            i.source,
            list(i.extra),
        ]
        for i in items
    ]
    return hashlib.sha1(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def _row(item: Item, path: Path, seconds: float) -> ManifestRow:
    extra = {"id": item.id, "split": item.split, "source": item.source, **dict(item.extra)}
    return ManifestRow(
        audio=str(path),
        text=item.text,
        task=item.task,
        prompt=item.prompt,
        answer=item.answer,
        lang=item.lang,
        speaker=item.speaker.id,
        duration=round(seconds, 3),
        extra=extra,
    )


def shard_done(folder: Path, fp: str) -> dict[str, Any] | None:
    """The done marker's content when the shard in ``folder`` is finished and holds ``fp``."""
    try:
        done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if done.get("fingerprint") == fp and (folder / "shard.jsonl").is_file() else None


def synth_shard(job: ShardJob) -> ShardResult:
    """Synthesise one shard from scratch: audio, then its rows, then the done marker."""
    t0 = os.times()
    folder = Path(job.folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    speakers.reseed(int(job.fingerprint[:8], 16))
    rows, skipped, seconds = [], [], 0.0
    for item in job.items:
        audio = speakers.synthesize(item.speaker, item.say)
        duration = len(audio) / SAMPLE_RATE
        if duration < MIN_SECONDS:
            skipped.append(item.id)
            continue
        path = folder / f"{item.id}.flac"
        write_audio(path, audio)
        rows.append(_row(item, path, duration))
        seconds += duration
    write_manifest(folder / "shard.jsonl", rows)
    t1 = os.times()
    cpu = sum(t1[:4]) - sum(t0[:4])
    atomic_write_json(
        folder / "done.json",
        {
            "fingerprint": job.fingerprint,
            "utterances": len(rows),
            "seconds": round(seconds, 3),
            "skipped": skipped,
            "cpu_seconds": round(cpu, 2),
        },
        indent=2,
        ensure_ascii=False,
    )
    return ShardResult(job.name, len(rows), seconds, tuple(skipped), True, cpu)


def _split_stats(rows: list[ManifestRow]) -> dict[str, Any]:
    seconds = sum(r.duration or 0.0 for r in rows)
    engines: dict[str, float] = defaultdict(float)
    for r in rows:
        engines[(r.speaker or "").split(":")[0]] += (r.duration or 0.0) / 3600
    return {
        "utterances": len(rows),
        "hours": round(seconds / 3600, 4),
        "speakers": len({r.speaker for r in rows}),
        "hours_by_engine": {k: round(v, 4) for k, v in sorted(engines.items())},
        "sources": dict(Counter(str(r.extra.get("source", "")).split(":")[0] for r in rows).most_common()),
    }


def _progress(total_hours: float, initial: float, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=round(total_hours, 3),
        initial=round(initial, 3),
        unit="h",
        disable=not enabled,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}]",
    )


def _pending(shard_jobs: list[ShardJob]) -> tuple[dict[str, ShardResult], list[ShardJob]]:
    """Results of shards an earlier run finished, and the jobs still to do."""
    results: dict[str, ShardResult] = {}
    todo = []
    for job in shard_jobs:
        done = shard_done(Path(job.folder), job.fingerprint)
        if done:
            results[job.name] = ShardResult(
                job.name, done["utterances"], done["seconds"], tuple(done["skipped"]), False
            )
        else:
            todo.append(job)
    return results, todo


def _run_shards(todo: list[ShardJob], jobs: int, bar) -> list[ShardResult]:
    """Synthesise ``todo`` on ``jobs`` processes (in this one when 1), ticking ``bar`` in hours."""
    pool = multiprocessing.get_context("spawn").Pool(jobs) if jobs > 1 else None
    finished = pool.imap_unordered(synth_shard, todo, chunksize=1) if pool else map(synth_shard, todo)
    results = []
    try:
        for result in finished:
            results.append(result)
            bar.total = max(bar.total, bar.n + result.seconds / 3600)  # estimates are rough
            bar.update(result.seconds / 3600)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return results


def _write_manifests(out: Path, shard_jobs: list[ShardJob]) -> dict[str, list[ManifestRow]]:
    """One manifest per split from the finished shards, rows in plan order."""
    by_split: dict[str, list[ManifestRow]] = {s: [] for s in SPLITS}
    rows = [row for job in shard_jobs for row in read_manifest(Path(job.folder) / "shard.jsonl")]
    for row in sorted(rows, key=lambda r: r.extra["id"]):
        by_split[row.extra["split"]].append(row)
    for split, split_rows in by_split.items():
        write_manifest(out / f"{split}.jsonl", split_rows)
    return by_split


def build(
    recipe: str,
    out: str | Path,
    hours: float,
    jobs: int | None = None,
    seed: int = 0,
    shard_size: int = SHARD_SIZE,
    max_utterances: int | None = None,
    progress: bool = True,
    splits: tuple[str, ...] = SPLITS,
) -> BuildResult:
    """Build (or finish) a corpus; see the module docstring for the layout and the rules.
    ``splits``: synthesise only these splits' items of the plan (the others' manifests stay empty),
    e.g. a test set for evaluation: the same rows as the whole build's."""
    started = time.perf_counter()
    rec = get_recipe(recipe)
    if hours <= 0:
        raise ValueError(f"--hours must be > 0, got {hours}")
    out = Path(out).absolute()
    unknown = set(splits) - set(SPLITS)
    if unknown or not splits:
        raise ValueError(f"--splits must name some of {', '.join(SPLITS)}, got {', '.join(splits) or 'none'}")
    items = [i for i in plan(rec, seed, hours, max_utterances) if i.split in splits]
    speakers.check_speakers({i.speaker for i in items})
    audio_root = out / "audio"
    shard_jobs = make_shards(items, audio_root, shard_size)
    results, todo = _pending(shard_jobs)
    if todo:  # shards are about to change: old manifests could list their files
        for stale in [out / f"{split}.jsonl" for split in SPLITS] + [out / "stats.json"]:
            stale.unlink(missing_ok=True)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    reused_hours = sum(r.seconds for r in results.values()) / 3600
    todo_hours = sum(i.estimate_seconds() for job in todo for i in job.items) / 3600
    synth_started = time.perf_counter()
    with _progress(reused_hours + todo_hours, reused_hours, progress) as bar:
        bar.set_description(rec.name)
        results.update((r.name, r) for r in _run_shards(todo, jobs, bar))
    synth_seconds = time.perf_counter() - synth_started
    for stale in audio_root.iterdir() if audio_root.is_dir() else ():
        if _SHARD_NAME.match(stale.name) and stale.name not in results:
            shutil.rmtree(stale)  # from an earlier, larger build of this folder
    by_split = _write_manifests(out, shard_jobs)
    all_rows = [r for rows in by_split.values() for r in rows]
    built = [r for r in results.values() if r.built]
    built_hours = sum(r.seconds for r in built) / 3600
    cpu_hours = sum(r.cpu_seconds for r in built) / 3600
    stats = {
        "recipe": rec.name,
        "seed": seed,
        "hours_requested": hours,
        "hours_estimated": round(sum(i.estimate_seconds() for i in items) / 3600, 4),
        "utterances": len(all_rows),
        "hours": round(sum(r.duration or 0 for r in all_rows) / 3600, 4),
        "speakers": len({r.speaker for r in all_rows}),
        "held_out_speakers": sorted(rec.held_out_speakers),
        "splits": {s: _split_stats(rows) for s, rows in by_split.items()},
        "skipped": sorted(x for r in results.values() for x in r.skipped),
        "shards": {
            "total": len(shard_jobs),
            "built": len(todo),
            "reused": len(shard_jobs) - len(todo),
            "size": shard_size,
        },
        "build": {
            "jobs": jobs,
            "wall_seconds": round(time.perf_counter() - started, 2),
            "synth_seconds": round(synth_seconds, 2),
            "audio_hours_built": round(built_hours, 4),
            "audio_hours_per_wall_hour": round(built_hours * 3600 / synth_seconds, 1) if built else None,
            "cpu_seconds": round(cpu_hours * 3600, 1),
            "audio_hours_per_cpu_hour": round(built_hours / cpu_hours, 1) if cpu_hours else None,
        },
    }
    atomic_write_json(out / "stats.json", stats, indent=2, ensure_ascii=False)
    return BuildResult(out, stats, len(todo), len(shard_jobs) - len(todo))


# ---------------------------------------------------------------- CLI


def register_synth(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speechllm data synth``."""
    parser.add_argument("--recipe", required=True, choices=list(RECIPES), help="which corpus to build")
    parser.add_argument("--hours", type=float, required=True, help="hours of audio to aim for (estimated)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="corpus folder (resumable)")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    parser.add_argument(
        "--shard-size", type=int, default=SHARD_SIZE, help=f"utterances per shard ({SHARD_SIZE})"
    )
    parser.add_argument("--max-utterances", type=int, default=None, help="stop planning after this many")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="synthesise only these splits of the plan (e.g. test: an evaluation set)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run_synth(args: argparse.Namespace) -> int:
    result = build(
        args.recipe,
        args.out,
        args.hours,
        jobs=args.jobs,
        seed=args.seed,
        shard_size=args.shard_size,
        max_utterances=args.max_utterances,
        progress=not args.quiet,
        splits=tuple(args.splits),
    )
    s = result.stats
    print(
        f"{result.out}: {s['recipe']} {s['hours']:.2f} h, {s['utterances']} utterances, "
        f"{s['speakers']} speakers ({result.shards_built} shards built, {result.shards_reused} reused)"
    )
    for split in SPLITS:
        st = s["splits"][split]
        print(
            f"  {split:<5} {st['hours']:8.3f} h {st['utterances']:7d} utterances {st['speakers']:4d} speakers"
        )
    rate = s["build"]["audio_hours_per_wall_hour"]
    if rate:
        print(
            f"  {s['build']['audio_hours_built']:.3f} h synthesised in {s['build']['synth_seconds']:.0f} s "
            f"= {rate:.0f} h of audio per hour on {s['build']['jobs']} jobs "
            f"({s['build']['audio_hours_per_cpu_hour']:.0f} h per CPU hour)"
        )
    if s["skipped"]:
        print(f"  {len(s['skipped'])} item(s) gave no audio and were left out", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speechllm data synth", description=__doc__.splitlines()[0])
    register_synth(parser)
    return run_synth(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
