"""``speechllm models``: every zoo name, where it resolves (or why not), size and licence."""

from __future__ import annotations

import argparse
import json

HELP = "list the model zoo: where each model resolves, its size and licence"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    parser.add_argument("--download", action="store_true",
                        help="also try the Hugging Face hub for models not found locally")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    from speechllm.zoo import zoo_status

    rows = zoo_status(download=args.download)
    if args.json:
        for r in rows:
            print(json.dumps({
                "name": r.entry.name, "kind": r.entry.kind, "hf_id": r.entry.hf_id,
                "licence": r.entry.licence, "source": r.resolved.source if r.resolved else None,
                "path": str(r.resolved.path) if r.resolved else None,
                "size_bytes": r.resolved.size_bytes() if r.resolved else None,
                "problem": r.problem or None,
            }))
        return 0
    header = f"{'name':<24} {'kind':<10} {'size':>9}  {'licence':<16} where"
    print(header)
    print("-" * len(header))
    for r in rows:
        size = _size(r.resolved.size_bytes()) if r.resolved else "-"
        where = f"{r.resolved.source}: {r.resolved.path}" if r.resolved else f"NOT FOUND: {r.problem}"
        print(f"{r.entry.name:<24} {r.entry.kind:<10} {size:>9}  {r.entry.licence:<16} {where}")
    return 0
