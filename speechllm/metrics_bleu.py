"""Corpus BLEU for scoring speech translation, computed by sacrebleu with its defaults.

One reference per segment, n-grams up to 4, ``13a`` tokenisation, exponential smoothing,
case-sensitive unless ``lowercase``. Every result carries sacrebleu's signature
(``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...``): print it beside the score, so
the figure can be compared with published ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BLEU:
    score: float  # 0..100
    precisions: tuple[float, ...]  # n-gram precisions, 0..100
    brevity_penalty: float
    hyp_length: int
    ref_length: int
    signature: str  # sacrebleu's, e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return f"BLEU {self.score:.2f} ({precisions}, BP {self.brevity_penalty:.3f}) [{self.signature}]"


def corpus_bleu(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = False) -> BLEU:
    from sacrebleu.metrics import BLEU as SacreBLEU

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    metric = SacreBLEU(lowercase=lowercase)
    result = metric.corpus_score(list(hyps), [list(refs)])
    return BLEU(result.score, tuple(result.precisions), result.bp, result.sys_len, result.ref_len,
                str(metric.get_signature()))
