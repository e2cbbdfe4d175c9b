"""A translation memory: the pairs nearest a sentence become the LLM's few-shot demonstrations.

A small LLM translates far better when its demonstrations resemble the sentence at hand (same
names, same turns of phrase, same register) than from a fixed handful. The memory is a file of
``source<TAB>target`` lines (optionally gzipped); a sentence is looked up by the idf-weighted words
its source side shares with each pair. Pairs that share too little (``min_score``) are not
returned, so an everyday sentence keeps the caller's fixed demonstrations instead of borrowing
archaic Bible verses.

The memory shipped with ``speechllm-translate`` and the starter is Reina-Valera 1909 -> World English
Bible, minus the ``st`` recipe's test split, where the translation benchmark draws its verses
(``data_recipes/texts.py: held_out_verses``); build it with ``python -m
speechllm.data_recipes.translation_memory OUT.tsv.gz``.
"""

from __future__ import annotations

import collections
import gzip
import math
import re
from collections.abc import Iterable
from pathlib import Path

WORD = re.compile(r"\w+")


class TranslationMemory:
    """(source, target) pairs, looked up by the idf-weighted words of the source side."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self.index: dict[str, list[int]] = collections.defaultdict(list)
        for i, (source, _) in enumerate(self.pairs):
            for word in set(WORD.findall(source.lower())):
                self.index[word].append(i)
        count = len(self.pairs)  # smoothed idf: never negative, 0 for a word in every pair
        self.idf = {w: math.log((1 + count) / (1 + len(ids))) for w, ids in self.index.items()}

    def __len__(self) -> int:
        return len(self.pairs)

    def nearest(self, text: str, k: int, min_score: float = 0.0) -> list[tuple[str, str]]:
        """Up to ``k`` pairs, best first, whose shared-word score is at least ``min_score``."""
        score: collections.Counter = collections.Counter()
        for word in set(WORD.findall(text.lower())):
            for i in self.index.get(word, ()):
                score[i] += self.idf[word]
        return [self.pairs[i] for i, s in score.most_common(k) if s >= min_score and s > 0]

    def reversed(self) -> TranslationMemory:
        """The same pairs read the other way (target -> source)."""
        return TranslationMemory((t, s) for s, t in self.pairs)

    @classmethod
    def read(cls, path: str | Path) -> TranslationMemory:
        """A ``source<TAB>target`` file (``.gz`` read compressed); a malformed line is an error naming it."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        pairs = []
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise ValueError(f"{path}:{number}: expected 'source<TAB>target', got {line[:60]!r}")
                pairs.append((parts[0].strip(), parts[1].strip()))
        return cls(pairs)

    def write(self, path: str | Path) -> None:
        from speechllm.files import atomic_write_bytes

        text = "".join(f"{s}\t{t}\n" for s, t in self.pairs).encode("utf-8")
        path = Path(path)
        atomic_write_bytes(path, gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
