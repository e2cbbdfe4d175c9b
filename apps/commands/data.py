"""``speechllm data ACTION``: import corpus layouts into manifests, validate manifests.

Actions live in :data:`ACTIONS` (name -> :class:`Action`); a new one (``synth``, ...) is
one more entry. Problems go to stderr one per line, results to stdout; the exit code is 1
whenever an item was left out or a row is bad.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HELP = "build and check data manifests (import corpus layouts, synthesize corpora, validate)"


@dataclass(frozen=True)
class Action:
    help: str
    register: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: Callable[[], str] | None = None  # called only when the parser is built


def _print_problems(problems: list[str]) -> None:
    for line in problems:
        print(line, file=sys.stderr)


# ---------------------------------------------------------------- import


def _register_import(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.importers import IMPORTERS
    from speechllm.manifest import TASKS

    parser.add_argument("format", choices=list(IMPORTERS), metavar="FORMAT", help=", ".join(IMPORTERS))
    parser.add_argument("src", type=Path, metavar="SRC", help="corpus folder, Kaldi data dir or TSV file")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="OUT.jsonl", help="manifest path")
    parser.add_argument("--task", default="asr", choices=list(TASKS), help="task of every row (default: asr)")
    parser.add_argument("--lang", help="language of every row (overrides the corpus' own, e.g. a locale)")
    parser.add_argument(
        "--no-duration", dest="duration", action="store_false",
        help="do not read audio headers for durations (files are still checked to exist)",
    )
    parser.add_argument(
        "--clips", type=Path, metavar="DIR", help="commonvoice: clips folder (default: clips/ beside the TSV)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _import_epilog() -> str:
    from speechllm.data_recipes.importers import IMPORTERS

    return "formats:\n" + "\n".join(f"  {name:<12} {imp.help}" for name, imp in IMPORTERS.items())


def _run_import(args: argparse.Namespace) -> int:
    from speechllm.data_recipes.importers import ImportOptions, import_corpus
    from speechllm.manifest import summarize, write_manifest

    opts = ImportOptions(
        task=args.task, lang=args.lang, duration=args.duration, clips=args.clips, progress=not args.quiet
    )
    result = import_corpus(args.format, args.src, opts)
    _print_problems(result.problems)
    if not result.rows:
        print(f"no usable rows in {args.src}; nothing written", file=sys.stderr)
        return 1
    write_manifest(args.out, result.rows)
    print(f"wrote {args.out}: {summarize(result.rows).describe()}")
    if result.problems:
        print(f"{len(result.problems)} problem(s); those items were left out of {args.out}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- synth


def _register_synth(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.synth import register_synth

    register_synth(parser)


def _run_synth(args: argparse.Namespace) -> int:
    from speechllm.data_recipes.synth import run_synth

    return run_synth(args)


# ---------------------------------------------------------------- distill


def _register_distill(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.distill import register_distill

    register_distill(parser)


def _run_distill(args: argparse.Namespace) -> int:
    from speechllm.data_recipes.distill import run_distill

    return run_distill(args)


# ---------------------------------------------------------------- text rows


def _register_text(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.text_rows import register_text

    register_text(parser)


def _run_text(args: argparse.Namespace) -> int:
    from speechllm.data_recipes.text_rows import run_text

    return run_text(args)


# ---------------------------------------------------------------- heard rows


def _register_heard(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.heard import register_heard

    register_heard(parser)


def _run_heard(args: argparse.Namespace) -> int:
    from speechllm.data_recipes.heard import run_heard

    return run_heard(args)


# ---------------------------------------------------------------- merge


def _register_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST", help="JSON-lines manifests")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="OUT.jsonl", help="merged manifest")
    parser.add_argument("--shuffle", type=int, metavar="SEED", help="shuffle the rows with this seed")
    parser.add_argument("--per-task", type=int, metavar="N", help="keep at most N rows of each task")


def _run_merge(args: argparse.Namespace) -> int:
    import random

    from speechllm.manifest import read_manifest, summarize, write_manifest

    rows = [row for path in args.manifests for row in read_manifest(path)]  # bad rows: one error each
    if args.shuffle is not None:
        random.Random(args.shuffle).shuffle(rows)
    if args.per_task is not None:
        by_task: dict[str, list] = {}
        for row in rows:
            by_task.setdefault(row.task, []).append(row)
        rows = [row for task_rows in by_task.values() for row in task_rows[: args.per_task]]
    write_manifest(args.out, rows)
    print(f"wrote {args.out}: {summarize(rows).describe()}")
    return 0


# ---------------------------------------------------------------- validate


def _register_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, metavar="MANIFEST", help="JSON-lines manifest")
    parser.add_argument(
        "--check-audio", action="store_true",
        help="also open every audio header (missing, unreadable, empty files)",
    )


def _run_validate(args: argparse.Namespace) -> int:
    from speechllm.manifest import summarize, validate_manifest

    rows, problems = validate_manifest(args.manifest, check_audio=args.check_audio)
    _print_problems(problems)
    print(f"{args.manifest}: {summarize(rows).describe()}")
    if problems:
        print(f"{len(problems)} bad row(s) in {args.manifest}", file=sys.stderr)
        return 1
    return 0


ACTIONS: dict[str, Action] = {
    "import": Action("import a corpus layout into a manifest", _register_import, _run_import, _import_epilog),
    "synth": Action("synthesize a corpus offline (asr, st, sqa, tts)", _register_synth, _run_synth),
    "distill": Action("a teacher voice reads a recipe's texts into a TTS cache (tts-train acoustic, vocoder)",
                      _register_distill, _run_distill),
    "text": Action("a recipe's rows without audio, for text-side training (finetune --text-train)",
                   _register_text, _run_text),
    "heard": Action("an audio manifest's rows as text rows, their text as a model's Whisper hears it "
                    "(finetune --text-train)", _register_heard, _run_heard),
    "merge": Action("merge manifests into one (paths rebased; optional shuffle, per-task cap)",
                    _register_merge, _run_merge),
    "validate": Action("check every row of a manifest (and its audio)", _register_validate, _run_validate),
}


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, action in ACTIONS.items():
        sub_parser = sub.add_parser(
            name, help=action.help, description=action.help, epilog=action.epilog and action.epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        action.register(sub_parser)
        sub_parser.set_defaults(_data_run=action.run)


def run(args: argparse.Namespace) -> int:
    return int(args._data_run(args) or 0)
