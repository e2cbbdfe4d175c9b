"""Corpus BLEU (Papineni et al., 2002) for scoring speech translation, with no dependencies.

Follows sacrebleu's defaults where they matter: one reference per segment, n-grams up to 4,
clipped counts summed over the corpus, brevity penalty on total lengths, the ``13a``-style
tokenisation (punctuation split off, except inside numbers), case-sensitive. No smoothing: a
corpus with no matching 4-gram scores 0 (sacrebleu ``smooth_method="none"``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_PUNCT = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")  # 13a: split these off
_PERIOD_COMMA = re.compile(r"([^0-9])([\.,])|([\.,])([^0-9])")
_DASH = re.compile(r"([0-9])(-)")


def tokenize_13a(text: str) -> list[str]:
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = f" {text} "
    text = _PUNCT.sub(r" \1 ", text)
    text = _PERIOD_COMMA.sub(r"\1 \2 \3 \4", text)
    text = _DASH.sub(r"\1 \2 ", text)
    return text.split()


@dataclass(frozen=True)
class BLEU:
    score: float  # 0..100
    precisions: tuple[float, ...]  # n-gram precisions, 0..100
    brevity_penalty: float
    hyp_length: int
    ref_length: int

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return f"BLEU {self.score:.2f} ({precisions}, BP {self.brevity_penalty:.3f})"


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(refs: Sequence[str], hyps: Sequence[str], max_n: int = 4, lowercase: bool = False) -> BLEU:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r = tokenize_13a(ref.lower() if lowercase else ref)
        h = tokenize_13a(hyp.lower() if lowercase else hyp)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            h_grams, r_grams = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, r_grams[g]) for g, c in h_grams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    precisions = tuple(100.0 * m / t if t else 0.0 for m, t in zip(matches, totals, strict=True))
    bp = 1.0 if hyp_len > ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    if min(matches) == 0:
        return BLEU(0.0, precisions, bp, hyp_len, ref_len)
    log_mean = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    return BLEU(100.0 * bp * math.exp(log_mean), precisions, bp, hyp_len, ref_len)
