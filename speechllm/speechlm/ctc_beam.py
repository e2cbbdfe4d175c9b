"""CTC prefix beam search over LLM-token units, with the LLM itself as the language model.

The CTC head of ``ctc-posterior`` writes LLM tokens; greedily, it drops and mishears short
words, which a language model would not let through. The speech-LLM already holds one: its
LLM. A prefix ``y`` of CTC units is scored ``log P_ctc(y | audio) + lm_weight * log P_llm(y) +
token_bonus * words(y)`` (shallow fusion; ``words`` counts the units that carry a letter or
digit, so the bonus does not pay for stray punctuation); ``P_ctc`` sums over all the paths that collapse to
``y`` (prefix beam search, Hannun et al., 2014), ``P_llm`` is the LLM's probability of the
tokens ``y`` stands for, read as plain text after ``<|endoftext|>`` and normalised over the
tokens the CTC head can write.

The LLM runs one token per prefix it must score, on a pooled KV cache that holds one row per
prefix still needed (:class:`LLMPrefixScorer`), and only for prefixes whose extensions could stay
in the beam (lazy scoring, :class:`CTCPrefixBeamSearch`). Each item of a batch searches on until
it needs the LLM; the requests of all items then go through the LLM as one batch. Frames where
the blank is near certain (``blank_skip``) only extend by blank or a repeat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor

from speechllm.generation.scorer import Key, LLMPrefixScorer  # noqa: F401  (the scorer lives with the engine)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CTCBeamOptions:
    # defaults: tuned for speechllm-starter on held-out texts (docs/speech-llm.md, "The starter model")
    beam_size: int = 1  # 1: the greedy CTC path, no LLM
    lm_weight: float = 0.3  # weight of the LLM's log-probability
    token_bonus: float = 2.0  # per unit with a letter or digit: offsets the LM's bias towards short outputs
    candidates: int = 4  # most likely units tried per frame...
    min_logprob: float = -5.0  # ...if at least this likely
    blank_skip: float = 0.999  # frames whose blank probability is above this emit nothing new
    prune: float = 5.0  # prefixes scoring this far below the best are dropped (fewer LLM calls)

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.candidates < 1:
            raise ValueError("beam_size and candidates must be at least 1")
        if not 0.0 < self.blank_skip <= 1.0:
            raise ValueError("blank_skip must be in (0, 1]")


def document_start_id(tokenizer) -> int:
    """The token a plain-text document starts after: the end-of-text separator when the
    tokenizer has one (SmolLM2, GPT-2, Qwen), else its BOS or EOS."""
    for token in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if token is not None and token in tokenizer.get_vocab():
            return tokenizer.convert_tokens_to_ids(token)
    raise ValueError("the tokenizer has no end-of-text, BOS or EOS token to start the LM context from")


def log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


@dataclass
class Beam:
    blank: float = NEG_INF  # log P of the paths ending in blank
    unit: float = NEG_INF  # ... ending in the prefix's last unit
    lm: float = 0.0  # LLM log-probability of the prefix
    rewarded: int = 0  # units of the prefix that earn token_bonus
    estimated: bool = False  # lm is an upper bound: the parent's next-token LM is not computed yet

    @property
    def ctc(self) -> float:
        return log_add(self.blank, self.unit)


Prefixes = dict[tuple[int, ...], Beam]
Request = tuple[list[Key], list[Key]]  # (prefixes whose LM is needed, rows to keep)


class CTCPrefixBeamSearch:
    """Each item's search runs until it needs the LLM (:meth:`_search` is a generator); the
    requests of all waiting items then go to the LLM as one batch.

    The LLM runs lazily: an extension is first scored with its LM term at its upper bound (0),
    and the parent's next-token distribution is computed only if that bound would keep the
    extension in the beam, so the result is the same as scoring every extension, with far fewer
    LLM rows (a prefix usually dies before anything is appended to it).
    """

    def __init__(self, options: CTCBeamOptions, scorer_factory: Callable[[int], LLMPrefixScorer | None],
                 rewarded_units: Collection[int] | None = None):
        """``scorer_factory(items)`` → an :class:`LLMPrefixScorer` for that many items (called only
        when ``lm_weight`` is not 0); ``rewarded_units``: the CTC ids that earn ``token_bonus``
        (default: all)."""
        self.options = options
        self.scorer_factory = scorer_factory
        self.rewarded_units = None if rewarded_units is None else frozenset(rewarded_units)

    def score(self, prefix: tuple[int, ...], beam: Beam) -> float:
        return beam.ctc + self.options.lm_weight * beam.lm + self.options.token_bonus * beam.rewarded

    def decode(self, log_probs: Sequence[Tensor]) -> list[list[int]]:
        """Per item, CTC log-probabilities [T_i, V] (blank = 0) → the best prefix of CTC ids."""
        if not log_probs:
            return []
        scorer = self.scorer_factory(len(log_probs)) if self.options.lm_weight else None
        searches = [self._search(item, lp.float().cpu(), scorer) for item, lp in enumerate(log_probs)]
        results: list[list[int]] = [[] for _ in searches]
        requests: dict[int, Request] = {}

        def advance(item: int) -> None:
            try:
                requests[item] = next(searches[item])
            except StopIteration as done:
                results[item] = done.value
                requests.pop(item, None)

        for item in range(len(searches)):
            advance(item)
        while requests:
            scorer.update([k for need, _ in requests.values() for k in need],
                          [k for _, keep in requests.values() for k in keep])
            for item in list(requests):
                advance(item)
        return results

    def _search(self, item: int, log_probs: Tensor, scorer) -> Iterator[Request]:
        o = self.options
        beams: Prefixes = {(): Beam(blank=0.0)}
        skip = math.log(o.blank_skip)
        for frame in log_probs:
            candidates = []
            if float(frame[0]) <= skip:
                values, units = frame[1:].topk(min(o.candidates, len(frame) - 1))
                candidates = [(int(u) + 1, float(v)) for v, u in zip(values, units, strict=True)
                              if float(v) >= o.min_logprob]
            while True:
                kept, missing = self._step(item, beams, frame, candidates, scorer)
                if not missing:
                    break
                keep = [(item, p) if (item, p) in scorer.logprobs else (item, p[:-1]) for p in beams]
                yield [(item, p) for p in missing], keep
            beams = kept
        return list(max(beams.items(), key=lambda kv: self.score(*kv))[0])

    def _step(self, item: int, beams: Prefixes, frame: Tensor, candidates: list[tuple[int, float]],
              scorer) -> tuple[Prefixes, set[tuple[int, ...]]]:
        """One frame: the kept prefixes, or the parents whose LM must be computed first."""
        blank = float(frame[0])
        out: Prefixes = {}

        def add(prefix: tuple[int, ...], like: Beam, ends_blank: float, ends_unit: float) -> None:
            """Add path mass to ``prefix``; ``like`` carries its LM score, estimated or not, and bonus."""
            beam = out.setdefault(prefix, Beam(lm=like.lm, estimated=like.estimated, rewarded=like.rewarded))
            if beam.estimated and not like.estimated:
                beam.lm, beam.estimated = like.lm, False
            beam.blank = log_add(beam.blank, ends_blank)
            beam.unit = log_add(beam.unit, ends_unit)

        for prefix, beam in beams.items():
            add(prefix, beam, beam.ctc + blank, NEG_INF)
            if prefix:  # the last unit goes on
                add(prefix, beam, NEG_INF, beam.unit + float(frame[prefix[-1]]))
            lm_next = None if scorer is None else scorer.logprobs.get((item, prefix))
            for unit, logprob in candidates:
                lm = beam.lm + (float(lm_next[unit - 1]) if lm_next is not None else 0.0)
                # a repeated unit needs a blank in between, else it merges into the last one
                before = beam.blank if prefix and unit == prefix[-1] else beam.ctc
                bonus = self.rewarded_units is None or unit in self.rewarded_units
                child = Beam(lm=lm, estimated=scorer is not None and lm_next is None,
                             rewarded=beam.rewarded + bonus)
                add(prefix + (unit,), child, NEG_INF, before + logprob)
        ranked = sorted(((self.score(*kv), kv) for kv in out.items()), key=lambda x: x[0], reverse=True)
        floor = ranked[0][0] - self.options.prune
        kept = dict(kv for score, kv in ranked[: self.options.beam_size] if score >= floor)
        return kept, {p[:-1] for p, beam in kept.items() if beam.estimated}
