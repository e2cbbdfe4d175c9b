"""Batched decoding on any Hugging Face causal LM fed ``inputs_embeds``: greedy, beam, streaming.

:class:`LMState` holds the batch's KV cache (the model's own cache object), attention
mask and positions, prefilled once from the spliced embeddings and advanced one token per
step. The policies are small decoders over it, as in whisper's decoding.py:
:func:`greedy_steps` yields each step's tokens (so callers can stream them), and
:class:`BeamSearchDecoder` keeps ``beam_size`` rows per item and reorders the cache. With
``beam_size=1`` beam search picks exactly the greedy tokens.

Every reply says why it ended (``Generation.stop``): ``"end"`` (the end-of-turn token),
``"repetition"`` (:class:`RepetitionGuard` saw the same run of tokens come back again and again:
the loop is cut after its first pass) or ``"length"`` (the token budget ran out).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechllm.hf_cache import cache_arg, output_cache


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    beam_size: int = 1
    length_penalty: float | None = None  # None: rank finished beams by logprob / length
    stop_repetition: bool = True  # end a greedy reply that loops (RepetitionGuard)

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_new_tokens < 1:
            raise ValueError("beam_size and max_new_tokens must be at least 1")


STOP_REASONS = ("end", "repetition", "length")


@dataclass(frozen=True)
class Generation:
    tokens: tuple[int, ...]  # without the stop token
    text: str
    logprob: float  # sum over the tokens (and the stop token when one was produced)
    stop: str = "end"  # one of STOP_REASONS


class RepetitionGuard:
    """Detects a reply caught in a loop: its last tokens are one run of ``period`` tokens repeated,
    at least ``min_span`` tokens in all and at least ``min_repeats`` times (``M. M. M. M. M. M.``, or
    a sentence said over and over). :meth:`cut` is where the loop's first pass ends."""

    def __init__(self, max_period: int = 24, min_span: int = 12, min_repeats: int = 3):
        self.max_period, self.min_span, self.min_repeats = max_period, min_span, min_repeats

    def cut(self, tokens: Sequence[int]) -> int | None:
        """The length to keep when ``tokens`` ends in a loop, else None."""
        n = len(tokens)
        for period in range(1, min(self.max_period, n // self.min_repeats) + 1):
            span = period * max(self.min_repeats, -(-self.min_span // period))
            if span > n:
                continue
            tail = tokens[n - span:]
            if all(tail[i] == tail[i - period] for i in range(period, span)):
                return n - span + period
        return None

    def held(self, tokens: Sequence[int]) -> int:
        """How many of the last tokens a stream should hold back: the longest tail that repeats
        what came ``period`` tokens before it (usually 0 or 1 token for ordinary text), so that what
        is shown never goes beyond where :meth:`cut` would end the reply."""
        n, held = len(tokens), 0
        for period in range(1, min(self.max_period, n - 1) + 1):
            k = 0
            while k + period < n and tokens[n - 1 - k] == tokens[n - 1 - k - period]:
                k += 1
            held = max(held, k)
        return held


def decode_text(tokenizer, tokens: Sequence[int], strip: bool = True) -> str:
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    return text.strip() if strip else text


class LMState:
    """KV cache, attention mask and next position of each row of a batch."""

    @torch.no_grad()
    def __init__(self, llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor):
        self.llm = llm
        self.mask = attention_mask
        self.next_position = position_ids[:, -1] + 1
        out = llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=True, logits_to_keep=1)
        self.cache = output_cache(out)
        self.logits = out.logits[:, -1].float()  # [rows, vocab]

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row; returns the next logits [rows, vocab]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.llm(input_ids=tokens[:, None].to(self.mask.device), attention_mask=self.mask,
                       position_ids=self.next_position[:, None], use_cache=True, **cache_arg(self.cache))
        self.cache = output_cache(out)
        self.next_position = self.next_position + 1
        self.logits = out.logits[:, -1].float()
        return self.logits

    def repeat(self, n: int) -> None:
        """Each row n times in a row (beam search start)."""
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, dim=0)
        self.next_position = self.next_position.repeat_interleave(n, dim=0)
        self.logits = self.logits.repeat_interleave(n, dim=0)

    def select(self, rows: Tensor) -> None:
        """Keep / reorder / duplicate rows."""
        rows = rows.to(self.mask.device)
        self.cache.reorder_cache(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]


def greedy_steps(state: LMState, stop_ids: Sequence[int], max_new_tokens: int) -> Iterator[Tensor]:
    """Yield the chosen token of every row at each step (-1 for rows already stopped)."""
    stops = torch.tensor(list(stop_ids), device=state.logits.device)
    done = torch.zeros(state.logits.shape[0], dtype=torch.bool, device=state.logits.device)
    logits = state.logits
    for _ in range(max_new_tokens):
        tokens = logits.argmax(-1)
        stopped = torch.isin(tokens, stops) | done
        yield torch.where(done, -1, tokens)
        done = stopped
        if bool(done.all()):
            return
        logits = state.step(torch.where(done, stops[0], tokens))


Decoded = tuple[list[int], float, str]  # tokens, logprob, stop reason


class GreedyDecoder:
    def __init__(self, stop_ids: Sequence[int], options: GenerationOptions):
        self.stop_ids, self.options = tuple(stop_ids), options
        self.guard = RepetitionGuard() if options.stop_repetition else None

    def run(self, state: LMState) -> list[Decoded]:
        rows = state.logits.shape[0]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs = [0.0] * rows
        stops = ["length"] * rows
        live = [True] * rows
        steps = greedy_steps(state, self.stop_ids, self.options.max_new_tokens)
        for step in steps:
            scores = state.logits.log_softmax(-1)  # the logits the step's tokens were chosen from
            for i, token in enumerate(step.tolist()):
                if token < 0 or not live[i]:
                    continue
                logprobs[i] += float(scores[i, token])
                if token in self.stop_ids:
                    stops[i], live[i] = "end", False
                    continue
                tokens[i].append(token)
                cut = self.guard.cut(tokens[i]) if self.guard else None
                if cut is not None:
                    tokens[i], stops[i], live[i] = tokens[i][:cut], "repetition", False
            if not any(live):
                steps.close()
                break
        return list(zip(tokens, logprobs, stops, strict=True))


class BeamSearchDecoder:
    """``beam_size`` hypotheses per item; an item ends once it has ``beam_size`` finished ones."""

    def __init__(self, stop_ids: Sequence[int], options: GenerationOptions):
        self.stop_ids, self.options = set(stop_ids), options

    def score(self, logprob: float, length: int) -> float:
        penalty = self.options.length_penalty
        return logprob / (max(length, 1) if penalty is None else ((5 + length) / 6) ** penalty)

    def run(self, state: LMState) -> list[Decoded]:
        k = self.options.beam_size
        items = state.logits.shape[0]
        state.repeat(k)
        sums = torch.full((items * k,), float("-inf"))
        sums[::k] = 0.0  # only the first beam of each item is live at the start
        beams: list[list[int]] = [[] for _ in range(items * k)]
        finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(items)]
        logits = state.logits
        for step in range(self.options.max_new_tokens):
            logprobs = logits.log_softmax(-1).cpu()
            next_rows, next_tokens, next_sums, next_beams = [], [], [], []
            for item in range(items):
                rows = range(item * k, (item + 1) * k)
                if len(finished[item]) >= k:  # done: keep its rows idle
                    next_rows += rows
                    next_tokens += [min(self.stop_ids)] * k
                    next_sums += [float("-inf")] * k
                    next_beams += [beams[r] for r in rows]
                    continue
                candidates = []
                for row in rows:
                    top = (sums[row] + logprobs[row]).topk(k + 1)
                    candidates += [(float(s), row, int(t))
                                   for s, t in zip(top.values, top.indices, strict=True)]
                kept = 0
                for total, row, token in sorted(candidates, key=lambda c: -c[0]):
                    if total == float("-inf"):
                        break
                    if token in self.stop_ids:
                        finished[item].setdefault(tuple(beams[row]), total)
                        if len(finished[item]) >= k:
                            break
                        continue
                    next_rows.append(row)
                    next_tokens.append(token)
                    next_sums.append(total)
                    next_beams.append(beams[row] + [token])
                    kept += 1
                    if kept == k:
                        break
                while kept < k:  # too few live candidates (finished item or tiny vocabulary)
                    next_rows.append(item * k)
                    next_tokens.append(min(self.stop_ids))
                    next_sums.append(float("-inf"))
                    next_beams.append([])
                    kept += 1
            if all(len(f) >= k for f in finished):
                break
            beams, sums = next_beams, torch.tensor(next_sums)
            if step == self.options.max_new_tokens - 1:
                break
            state.select(torch.tensor(next_rows))
            logits = state.step(torch.tensor(next_tokens))
        results = []
        for item in range(items):
            pool = dict(finished[item])
            if len(pool) < k:  # ran out of steps: unfinished beams count too
                for row in range(item * k, (item + 1) * k):
                    if float(sums[row]) > float("-inf"):
                        pool.setdefault(tuple(beams[row]), float(sums[row]))
            best = max(pool.items(), key=lambda kv: self.score(kv[1], len(kv[0])), default=((), 0.0))
            results.append((list(best[0]), best[1], "end" if best[0] in finished[item] else "length"))
        return results


def run_decoder(state: LMState, stop_ids: Sequence[int], options: GenerationOptions) -> list[Decoded]:
    decoder = GreedyDecoder if options.beam_size == 1 else BeamSearchDecoder
    return decoder(stop_ids, options).run(state)
