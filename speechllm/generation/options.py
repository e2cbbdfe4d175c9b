"""What to generate and what came out: the one ``GenerationOptions``, ``Generation`` (why a reply
ended: ``Generation.stop``) and the :class:`RepetitionGuard` that ends a looping reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

STOP_REASONS = ("end", "repetition", "length")


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128  # the length budget
    temperature: float = 0.0  # 0: greedy; else sampling after the top-k / top-p filters
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # sampling: a fixed seed gives the same reply
    beam_size: int = 1
    length_penalty: float | None = None  # beam search; None: rank finished beams by logprob / length
    stop_repetition: bool = True  # end a reply that loops (RepetitionGuard)
    eos_token_id: int | tuple[int, ...] | None = None  # generate(model, ids): default the config's
    # speculative decoding (greedy, one row): drafts from a suffix automaton over the prompt and
    # the reply so far, verified by the LLM in one forward pass; the output is greedy's, token for
    # token (the engine gives each row of a verify pass the numbers it gets alone; docs/decoding.md)
    speculative: bool = True
    draft_tokens: int = 12  # longest draft verified at once (drafts start at 2 and double while they hold)
    min_match: int = 1  # draft once this many tokens matched (one is often enough: a name's first piece)
    phrases: bool = True  # drafts also from the model's phrase book (its own replies), where it has one
    draft_head: bool = True  # drafts also from the model's draft head (its hidden states), where it has one
    engine: str = "auto"  # "auto": the registry's engine for the model type; "hf": the fallback
    # a question about a recording (a task that quotes_audio) is answered by a span of what was heard or
    # the task's refusal, nothing else (QuoteConstraint); False: the LLM writes freely
    quote_answers: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_new_tokens < 1:
            raise ValueError("beam_size and max_new_tokens must be at least 1")
        if self.draft_tokens < 1 or self.min_match < 1:
            raise ValueError("draft_tokens and min_match must be at least 1")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 and self.beam_size == 1


@dataclass(frozen=True)
class Generation:
    tokens: tuple[int, ...]  # without the stop token
    text: str
    logprob: float  # sum over the tokens (and the stop token when one was produced)
    stop: str = "end"  # one of STOP_REASONS


@dataclass(frozen=True)
class GenerationResult:
    """A continuation of token ids (:func:`speechllm.generation.generate`), with its timing."""

    tokens: list[int]  # new tokens only (without the stopping token)
    finished: bool  # stopped on an end token (not on the budget or a loop)
    prefill_s: float
    decode_s: float
    score: float = 0.0  # beam search: length-normalised log probability
    alternatives: list[list[int]] = field(default_factory=list)  # beam search: the other finished beams
    stop: str = "end"
    drafted: int = 0  # speculative decoding: draft tokens proposed...
    accepted: int = 0  # ...and accepted by the LLM

    @property
    def tokens_per_s(self) -> float:
        return max(len(self.tokens) - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0


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


class Reply:
    """One row's reply as its tokens arrive: stop token, repetition guard and budget applied."""

    def __init__(self, stop_ids: Sequence[int], options: GenerationOptions):
        self.stop_ids, self.budget = frozenset(stop_ids), options.max_new_tokens
        self.guard = RepetitionGuard() if options.stop_repetition else None
        self.tokens: list[int] = []
        self.logprob, self.stop, self.live = 0.0, "length", True

    def add(self, token: int, logprob: float) -> bool:
        """Take one token; False once the reply has ended."""
        self.logprob += logprob
        if token in self.stop_ids:
            self.stop, self.live = "end", False
            return False
        self.tokens.append(token)
        cut = self.guard.cut(self.tokens) if self.guard else None
        if cut is not None:
            self.tokens, self.stop, self.live = self.tokens[:cut], "repetition", False
        elif len(self.tokens) >= self.budget:
            self.live = False
        return self.live

    def settled(self) -> int:
        """How many tokens a stream may show: a loop may be forming in the rest."""
        return len(self.tokens) - (self.guard.held(self.tokens) if self.guard and self.live else 0)


def decode_text(tokenizer, tokens: Sequence[int], strip: bool = True) -> str:
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    return text.strip() if strip else text
