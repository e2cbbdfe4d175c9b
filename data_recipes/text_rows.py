"""Text rows for text-side training (``speechllm data text``): a recipe's utterances without audio.

A recipe's stream already knows, for every item, what the audio would say and what the reply is;
text-side training (``speechllm finetune --text-train``) needs nothing else, so a row here is the
manifest row synthesis would write, minus the audio: ``{"task", "text", "prompt", "answer", "lang",
"source_text", ...}``. Only the split asked for is kept (train by default), so the held-out texts of
every recipe stay held out. Drawing is cheap (thousands of rows a second), and every row is fresh
text: unlimited data for the price of a tokenizer.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from speechllm.data_recipes.recipes import RECIPES, SPLITS, get_recipe


def text_rows(recipe: str, count: int, seed: int = 0, split: str = "train") -> Iterator[dict[str, Any]]:
    """The first ``count`` items of ``recipe``'s ``split`` as text rows (distinct texts only)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    seen: set[tuple[str, str | None]] = set()
    made = 0
    for item in get_recipe(recipe).items(seed):
        if made >= count:
            return
        key = (item.say, item.prompt)
        if item.split != split or key in seen:
            continue
        seen.add(key)
        row = {"task": item.task, "text": item.text, "prompt": item.prompt, "answer": item.answer,
               "lang": item.lang, "source": item.source, **dict(item.extra)}
        yield {k: v for k, v in row.items() if v is not None}
        made += 1


def register_text(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME[:COUNT]",
                        help=f"a recipe ({', '.join(RECIPES)}) and how many rows to draw from it "
                             "(default 10000); repeat for a mix")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="OUT.jsonl")
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0)


def run_text(args: argparse.Namespace) -> int:
    from speechllm.files import atomic_write_text

    plan = []
    for spec in args.recipe:
        name, _, count = spec.partition(":")
        get_recipe(name)
        if count and not count.isdigit():
            raise ValueError(f"--recipe {spec}: the count after ':' must be a whole number")
        plan.append((name, int(count or 10_000)))
    rows = [json.dumps(row, ensure_ascii=False) for name, count in plan
            for row in text_rows(name, count, args.seed, args.split)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "".join(r + "\n" for r in rows))
    print(f"{len(rows)} text rows -> {args.out}")
    return 0
