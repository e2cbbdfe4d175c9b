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

import torch
from torch import Tensor, nn

from speechllm.hf_cache import cache_arg, cache_tensors, make_cache, output_cache

NEG_INF = float("-inf")
Key = tuple[int, tuple[int, ...]]  # (item, prefix of CTC ids)


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


class LLMPrefixScorer:
    """The LLM's next-token log-probabilities, over the CTC units, of many prefixes at once.

    A pool of KV-cache rows holds one row per prefix the search may still extend.
    :meth:`update` runs the LLM only on the prefixes asked for, each from a copy of its parent's
    row plus its last token, and appends their rows to the pool; the kept rows get one masked
    column so all rows keep one length (cheap: no matrix products), and columns masked in every
    row are dropped from time to time.
    """

    @torch.no_grad()
    def __init__(self, llm: nn.Module, unit_tokens: Tensor, items: int, bos: int):
        self.decoder = llm.get_decoder()  # the transformer without its output layer
        device = next(llm.parameters()).device
        self.unit_tokens = unit_tokens.to(device)  # CTC id k (k >= 1) is LLM token unit_tokens[k - 1]
        # the output layer's rows for the units only: the CTC can write no other token, so the
        # LM is normalised over them (and a 49k-row product per step is most of a small LLM's cost)
        self.head = _output_rows(llm.get_output_embeddings(), self.unit_tokens)
        ids = torch.full((items, 1), bos, device=device)
        self.mask = torch.ones_like(ids)
        self.next_position = torch.ones(items, dtype=torch.long, device=device)
        out = self.decoder(input_ids=ids, attention_mask=self.mask, position_ids=torch.zeros_like(ids),
                           use_cache=True)
        self.kv = cache_tensors(output_cache(out))
        self.rows: dict[Key, int] = {(item, ()): item for item in range(items)}
        self.logprobs: dict[Key, Tensor] = {}
        self._store(list(self.rows), out.last_hidden_state[:, -1])

    def _store(self, keys: Sequence[Key], hidden: Tensor) -> None:
        scores = (hidden @ self.head.T).float().log_softmax(-1).cpu()
        for key, row in zip(keys, scores, strict=True):
            self.logprobs[key] = row

    @torch.no_grad()
    def update(self, need: Sequence[Key], keep: Sequence[Key]) -> None:
        """Compute the prefixes ``need`` (each from its parent's row) in one batched step; the
        pool then holds their rows and those of ``keep`` (prefixes still to be extended, or
        parents of prefixes not computed yet)."""
        new = [k for k in dict.fromkeys(need) if k not in self.rows]
        if not new:
            return
        kept_keys = [k for k in dict.fromkeys(keep) if k in self.rows]
        kept = torch.tensor([self.rows[k] for k in kept_keys], dtype=torch.long)
        parents = torch.tensor([self.rows[(k[0], k[1][:-1])] for k in new], dtype=torch.long)
        tokens = self.unit_tokens[torch.tensor([k[1][-1] - 1 for k in new], device=self.mask.device)]
        mask = torch.cat([self.mask[parents], self.mask.new_ones(len(new), 1)], dim=1)
        out = self.decoder(input_ids=tokens[:, None], attention_mask=mask,
                           position_ids=self.next_position[parents, None],
                           **cache_arg(make_cache([(k[parents], v[parents]) for k, v in self.kv])),
                           use_cache=True)
        grown = cache_tensors(output_cache(out))
        self.kv = [(torch.cat([_pad_column(k[kept]), k2]), torch.cat([_pad_column(v[kept]), v2]))
                   for (k, v), (k2, v2) in zip(self.kv, grown, strict=True)]
        self.mask = torch.cat([_pad_column(self.mask[kept]), mask])
        self.next_position = torch.cat([self.next_position[kept], self.next_position[parents] + 1])
        self._drop_dead_columns()
        self.rows = {k: i for i, k in enumerate(kept_keys + new)}
        self.logprobs = {k: self.logprobs[k] for k in kept_keys}
        self._store(new, out.last_hidden_state[:, -1])

    def _drop_dead_columns(self) -> None:
        """Positions masked in every row (their prefixes died) only cost copies: drop them once a
        quarter of the cache is dead. Positions are explicit, so nothing else moves."""
        alive = self.mask.bool().any(0)
        if int(alive.sum()) < 0.75 * len(alive):
            self.mask = self.mask[:, alive]
            self.kv = [(k[:, :, alive], v[:, :, alive]) for k, v in self.kv]


def _output_rows(head: nn.Module, tokens: Tensor) -> Tensor:
    """Rows of the LLM's output layer, float, from an ``nn.Linear`` or a low-bit ``QuantLinear``
    (a speech-LLM whose config sets ``quant``), dequantizing only the rows asked for."""
    if hasattr(head, "qweight"):
        return head.qweight.rows(tokens).dequantize()
    return head.weight[tokens]


def _pad_column(x: Tensor) -> Tensor:
    """One zero (masked) position appended on the sequence axis: [rows, L] or [rows, heads, L, dim]."""
    return torch.nn.functional.pad(x, (0, 1) if x.dim() == 2 else (0, 0, 0, 1))


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
