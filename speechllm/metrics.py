"""Error rates for scoring transcripts, counted by jiwer; both sides go through one normaliser.

``normalizer`` picks it by name from :data:`speechllm.text_normalize.NORMALIZERS`: ``spoken``
(the project's spoken-form words, the default: corpora store that form) or ``whisper``
(openai-whisper's ``EnglishTextNormalizer``, the one published English WERs use), or ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from speechllm.text_normalize import get_normalizer


@dataclass(frozen=True)
class ErrorRate:
    errors: int
    total: int

    @property
    def rate(self) -> float:
        return self.errors / self.total if self.total else float(self.errors > 0)

    def __str__(self) -> str:
        return f"{100 * self.rate:.2f}% ({self.errors}/{self.total})"


def _normalized(refs: Sequence[str], hyps: Sequence[str], normalizer: str) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    norm = get_normalizer(normalizer)
    return [norm(r) for r in refs], [norm(h) for h in hyps]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], normalizer: str = "spoken") -> ErrorRate:
    """Corpus-level WER: total word edits over total reference words, after normalisation."""
    import jiwer

    r, h = _normalized(refs, hyps, normalizer)
    if not r:
        return ErrorRate(0, 0)
    out = jiwer.process_words(r, h)
    return ErrorRate(out.substitutions + out.deletions + out.insertions,
                     out.substitutions + out.deletions + out.hits)


def char_error_rate(refs: Sequence[str], hyps: Sequence[str], normalizer: str = "spoken") -> ErrorRate:
    """Corpus-level CER over the normalised text's characters, spaces left out."""
    import jiwer

    r, h = _normalized(refs, hyps, normalizer)
    if not r:
        return ErrorRate(0, 0)
    out = jiwer.process_characters([s.replace(" ", "") for s in r], [s.replace(" ", "") for s in h])
    return ErrorRate(out.substitutions + out.deletions + out.insertions,
                     out.substitutions + out.deletions + out.hits)


def reference_edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance, the textbook pure-Python dynamic programme (O(len(ref) * len(hyp))): the
    oracle that jiwer's counts are checked against, and the speed baseline of ``benchmarks/scores.py``."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]
