"""Build the Spanish -> English translation memory that ``speechllm-translate`` ships.

    python -m speechllm.data_recipes.translation_memory speechllm/weights/translate/memory-es-en.tsv.gz

Reina-Valera 1909 -> World English Bible verse pairs (the sword modules the Makefile installs), verses
of at most ``--max-words`` Spanish words, minus every verse of the ``st`` recipe's test split, where the
translation benchmark draws its verses (``texts.held_out_verses``), so it may draw any number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechllm.data_recipes.texts import split_of, verse_pairs
from speechllm.speechlm.memory import TranslationMemory


def bible_memory(max_words: int = 30) -> TranslationMemory:
    """The verse pairs, none of the test split's nor any with a test verse's Spanish (a formula that recurs,
    "Y fué á mí palabra de Jehová, diciendo:")."""
    pairs = [(" ".join(v.es.split()), " ".join(v.en.split()), split_of(v.en)) for v in verse_pairs()]
    tested = {es for es, _, split in pairs if split == "test"}
    return TranslationMemory(
        (es, en) for es, en, _ in pairs if es not in tested and len(es.split()) <= max_words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a .tsv or .tsv.gz file")
    parser.add_argument("--max-words", type=int, default=30)
    args = parser.parse_args()
    memory = bible_memory(args.max_words)
    memory.write(args.out)
    print(f"{len(memory)} pairs -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
