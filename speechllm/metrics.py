"""Error rates for scoring transcripts; both sides go through one text normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from speechllm.text_normalize import normalize


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class ErrorRate:
    errors: int
    total: int

    @property
    def rate(self) -> float:
        return self.errors / self.total if self.total else float(self.errors > 0)

    def __str__(self) -> str:
        return f"{100 * self.rate:.2f}% ({self.errors}/{self.total})"


def _error_rate(refs: Sequence[str], hyps: Sequence[str], split: Callable[[str], list]) -> ErrorRate:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = split(normalize(ref)), split(normalize(hyp))
        errors += edit_distance(r, h)
        total += len(r)
    return ErrorRate(errors, total)


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    """Corpus-level WER: total word edits over total reference words, after normalisation."""
    return _error_rate(refs, hyps, str.split)


def char_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    return _error_rate(refs, hyps, lambda s: list(s.replace(" ", "")))
