"""Decoding strategies over an engine's state, as small classes (whisper's ``decoding.py``).

- :func:`token_stream`: one row, greedy, token by token (what streams), with speculative
  decoding when drafts are on: :class:`~speechllm.generation.speculative.SamDrafter` proposes (else
  the model's :class:`~speechllm.generation.draft_head.HeadDrafter`, where it has one), the LLM
  verifies the draft in one ``extend`` and the cache rolls back past the first miss.
- :class:`GreedyDecoder`: a batch, greedy or sampled (:class:`TokenChooser`); one greedy row goes
  through :func:`token_stream`.
- :class:`BeamSearchDecoder`: ``beam_size`` rows per item; with ``beam_size=1`` it picks exactly
  the greedy tokens.

Every reply ends on its end token, the repetition guard or the length budget
(:class:`~speechllm.generation.options.Reply`). Any strategy can be held to a constraint per row
(:class:`~speechllm.generation.constraints.QuoteConstraint`: a reply that quotes what was heard).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from speechllm.generation.constraints import START, QuoteConstraint, State
from speechllm.generation.draft_head import HeadDrafter
from speechllm.generation.options import GenerationOptions, Reply
from speechllm.generation.speculative import PhraseBook, SamDrafter

Decoded = tuple[list[int], float, str]  # tokens, logprob, stop reason
Constraints = Sequence[QuoteConstraint | None]  # one per row of the batch (or empty: none)


class RowConstraint:
    """One row's constraint as its reply grows (no constraint: masks nothing)."""

    def __init__(self, constraint: QuoteConstraint | None, state: State = START):
        self.constraint, self.state = constraint, state

    def mask(self, scores: Tensor) -> Tensor:
        return scores if self.constraint is None else self.constraint.mask(scores, self.state)

    def after(self, token: int) -> RowConstraint:
        if self.constraint is None:
            return self
        return RowConstraint(self.constraint, self.constraint.advance(self.state, token))


def _rows(constraints: Constraints, n: int) -> list[RowConstraint]:
    if constraints and len(constraints) != n:
        raise ValueError(f"{len(constraints)} constraints for {n} rows")
    return [RowConstraint(c) for c in constraints] if constraints else [RowConstraint(None)] * n


class TokenChooser:
    """Greedy when ``temperature == 0``; otherwise sampling after temperature, top-k and top-p filters."""

    def __init__(self, options: GenerationOptions, device: torch.device):
        self.options = options
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)

    def __call__(self, logits: Tensor) -> Tensor:
        o = self.options
        if o.temperature <= 0:
            return logits.argmax(-1)
        logits = logits / o.temperature
        if o.top_k > 0:
            kth = logits.topk(min(o.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if o.top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs > o.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[..., 0]


@dataclass
class DraftStats:
    drafted: int = 0  # draft tokens sent to the LLM for checking
    accepted: int = 0  # of which the LLM agreed with
    passes: int = 0  # forward passes after the prefill


def token_stream(state, stop_ids: Sequence[int], options: GenerationOptions, prompt: Sequence[int] = (),
                 stats: DraftStats | None = None, phrases: PhraseBook | None = None,
                 head: HeadDrafter | None = None,
                 constraint: QuoteConstraint | None = None) -> Iterator[tuple[int, float]]:
    """Greedy (token, logprob) of row 0, stop token included, at most ``max_new_tokens``; with a
    ``constraint``, the most likely token it allows (the logprob stays the model's).

    With ``options.speculative`` the tokens are the same, but the drafter's guesses are checked
    several at a time. ``prompt``: the token ids the reply may copy from (seeds the drafter);
    ``phrases``: the model's phrase book (drafts where the prompt has none; ``options.phrases``);
    ``head``: the model's draft head (drafts from the LLM's hidden state where the prompt and the book
    have none; ``options.draft_head``)."""
    stats = stats if stats is not None else DraftStats()
    # drafts only on an engine whose verify pass scores each row as a step would (the static engine)
    exact = getattr(state, "row_exact", False)
    book = phrases if options.phrases else None
    drafter = SamDrafter(prompt, options.min_match, book) if options.speculative and exact else None
    head = head if drafter is not None and options.draft_head else None
    stops = frozenset(stop_ids)
    budget = options.max_new_tokens
    emitted = 0
    # the next draft's length, adapted to how the drafts fare: copies double while they hold, the head's
    # chains (each token dearer to draft, and less sure) grow by one
    size = head_size = min(2, options.draft_tokens)
    logits = state.logits[:1]
    row = RowConstraint(constraint)
    while True:
        scores = logits.log_softmax(-1)
        token = int(row.mask(scores).argmax(-1)[0])
        yield token, float(scores[0, token])
        emitted += 1
        if token in stops or emitted >= budget:
            return
        row = row.after(token)
        draft: list[int] = []
        from_head = False
        if drafter is not None:
            drafter.append(token)
            draft = drafter.draft(min(size, budget - emitted))
            if not draft and head is not None:
                draft = head.draft(state.hidden[0, -1], token, min(head_size, budget - emitted))
                from_head = True
        stats.passes += 1
        if not draft:
            logits = state.step(torch.tensor([token]))
            continue
        logits_after = state.extend_lazily(torch.tensor([[token, *draft]]))
        rows = [logits_after(0)[:1]]  # the logits after the token, then after each accepted draft token
        scores = [rows[0].log_softmax(-1)]
        held = [row]  # the constraint before each draft token
        while len(held) <= len(draft):
            guess = draft[len(held) - 1]
            if int(held[-1].mask(scores[-1]).argmax(-1)[0]) != guess:
                break
            held.append(held[-1].after(guess))
            rows.append(logits_after(len(rows))[:1])
            scores.append(rows[-1].log_softmax(-1))
        accepted = len(scores) - 1
        stats.drafted += len(draft)
        stats.accepted += accepted
        # each drafted row costs a fraction of a step: draft longer while drafts hold, shorter after a miss;
        # after a draft missed at once, ask for one more matched token before the next (free text)
        if from_head:
            grown = min(head_size + 1, options.draft_tokens)
            head_size = grown if accepted == len(draft) else max(1, accepted)
        else:
            size = min(2 * size, options.draft_tokens) if accepted == len(draft) else max(1, accepted)
            drafter.min_match = options.min_match + (accepted == 0)
        state.rollback(len(draft) - accepted, rows[-1])
        for i in range(accepted):
            t = draft[i]
            yield t, float(scores[i][0, t])
            emitted += 1
            if t in stops or emitted >= budget:
                return
            drafter.append(t)
        row = held[accepted]
        logits = rows[-1]


class GreedyDecoder:
    def __init__(self, stop_ids: Sequence[int], options: GenerationOptions, prompt: Sequence[int] = (),
                 phrases: PhraseBook | None = None, head: HeadDrafter | None = None,
                 constraints: Constraints = ()):
        self.stop_ids, self.options, self.prompt, self.phrases = tuple(stop_ids), options, prompt, phrases
        self.head, self.constraints = head, constraints
        self.stats = DraftStats()

    def run(self, state) -> list[Decoded]:
        if state.logits.shape[0] == 1 and self.options.temperature <= 0:
            reply = Reply(self.stop_ids, self.options)
            constraint = _rows(self.constraints, 1)[0].constraint
            for token, logprob in token_stream(state, self.stop_ids, self.options, self.prompt, self.stats,
                                               self.phrases, self.head, constraint):
                if not reply.add(token, logprob):
                    break
            return [(reply.tokens, reply.logprob, reply.stop)]
        return self._batch(state)

    def _batch(self, state) -> list[Decoded]:
        choose = TokenChooser(self.options, state.logits.device)
        replies = [Reply(self.stop_ids, self.options) for _ in range(state.logits.shape[0])]
        held = _rows(self.constraints, len(replies))
        logits = state.logits
        for _ in range(self.options.max_new_tokens):
            chosen = choose(torch.stack([c.mask(row) for c, row in zip(held, logits, strict=True)]))
            scores = logits.log_softmax(-1).gather(-1, chosen[:, None])[:, 0].tolist()
            for i, (reply, token, score) in enumerate(zip(replies, chosen.tolist(), scores, strict=True)):
                if reply.live:
                    reply.add(token, score)
                    held[i] = held[i].after(token)
            if not any(r.live for r in replies):
                break
            logits = state.step(chosen)  # rows that ended run on, unread
        return [(r.tokens, r.logprob, r.stop) for r in replies]


class BeamSearchDecoder:
    """``beam_size`` hypotheses per item; an item ends once it has ``beam_size`` finished ones."""

    def __init__(self, stop_ids: Sequence[int], options: GenerationOptions, prompt: Sequence[int] = (),
                 phrases: PhraseBook | None = None, head: HeadDrafter | None = None,
                 constraints: Constraints = ()):
        self.stop_ids, self.options, self.constraints = set(stop_ids), options, constraints

    def score(self, logprob: float, length: int) -> float:
        penalty = self.options.length_penalty
        return logprob / (max(length, 1) if penalty is None else ((5 + length) / 6) ** penalty)

    def run(self, state) -> list[Decoded]:
        k = self.options.beam_size
        items = state.logits.shape[0]
        state.repeat(k)
        sums = torch.full((items * k,), float("-inf"))
        sums[::k] = 0.0  # only the first beam of each item is live at the start
        beams: list[list[int]] = [[] for _ in range(items * k)]
        held = [c for c in _rows(self.constraints, items) for _ in range(k)]
        finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(items)]
        logits = state.logits
        for step in range(self.options.max_new_tokens):
            logprobs = logits.log_softmax(-1).cpu()
            logprobs = torch.stack([c.mask(row) for c, row in zip(held, logprobs, strict=True)])
            next_rows, next_tokens, next_sums, next_beams, next_held = [], [], [], [], []
            for item in range(items):
                rows = range(item * k, (item + 1) * k)
                if len(finished[item]) >= k:  # done: keep its rows idle
                    next_rows += rows
                    next_tokens += [min(self.stop_ids)] * k
                    next_sums += [float("-inf")] * k
                    next_beams += [beams[r] for r in rows]
                    next_held += [held[r] for r in rows]
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
                    next_held.append(held[row].after(token))
                    kept += 1
                    if kept == k:
                        break
                while kept < k:  # too few live candidates (finished item or tiny vocabulary)
                    next_rows.append(item * k)
                    next_tokens.append(min(self.stop_ids))
                    next_sums.append(float("-inf"))
                    next_beams.append([])
                    next_held.append(held[item * k])
                    kept += 1
            if all(len(f) >= k for f in finished):
                break
            beams, sums, held = next_beams, torch.tensor(next_sums), next_held
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


DECODERS = {"greedy": GreedyDecoder, "beam": BeamSearchDecoder}


def run_decoder(state, stop_ids: Sequence[int], options: GenerationOptions,
                prompt: Sequence[int] = (), phrases: PhraseBook | None = None,
                head: HeadDrafter | None = None, constraints: Constraints = ()) -> list[Decoded]:
    """Decode a prefilled batch with the strategy the options name (beam search when beam_size > 1);
    ``prompt``, ``phrases`` and ``head`` seed the drafts of a greedy row (:func:`token_stream`);
    ``constraints``: one per row (None: free), or none at all."""
    decoder = DECODERS["greedy" if options.beam_size == 1 else "beam"]
    return decoder(stop_ids, options, prompt, phrases, head, constraints).run(state)


def greedy_steps(state, stop_ids: Sequence[int], max_new_tokens: int) -> Iterator[Tensor]:
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
