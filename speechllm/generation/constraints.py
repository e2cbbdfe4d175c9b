"""Constrained decoding: replies that may only quote what they were given.

A question about a recording is answered by a span of what was heard, or by a fixed refusal
(``NOT_STATED``). A :class:`QuoteConstraint` masks, at each step, every token that would leave
those: the reply so far must be a piece of a source text that starts where a word starts (its
first letter in either case: "At six" quotes "... at six"), and it may end (its stop token is
allowed) only where a word ends; a *whole* text (the refusal) must be said from its start to its
end. The model still chooses among what is allowed, so a copying model writes what it would have
written, minus the misspelt copies ("Beall" for "Bella"), half words ("one degree" for "one
degrees") and names that are not in the recording.

Matching is on bytes (the tokenizer's own byte strings), so any script works and a token that splits a
character is matched like any other. A state is the set of places, in the sources, where the reply
so far could end; the decoders keep one per row (:mod:`speechllm.generation.decoders`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

# where the reply so far ends in the sources, as (source index, byte position) pairs; START (None):
# nothing written yet, so any word start of a span and the start of a whole text may come next
State = frozenset | None
START: State = None


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _piece_bytes(piece: str, byte_of: dict[str, int]) -> bytes | None:
    """A vocabulary piece's bytes: byte-level BPE (``Ġ`` for a space), SentencePiece (``▁``, ``<0xNN>``)."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    if all(c in byte_of for c in piece):
        return bytes(byte_of[c] for c in piece)
    return piece.replace("▁", " ").encode()


class TokenBytes:
    """Each token id's byte string, and the ids for each byte string: what a
    :class:`QuoteConstraint` matches against. Tokens without bytes (special ones) are absent."""

    def __init__(self, bytes_of: dict[int, bytes]):
        self.bytes_of = {token: data for token, data in bytes_of.items() if data}
        self.ids_of: dict[bytes, list[int]] = {}
        for token, data in sorted(self.bytes_of.items()):
            self.ids_of.setdefault(data, []).append(token)
        self.longest = max(map(len, self.ids_of), default=1)

    @classmethod
    def of_tokenizer(cls, tokenizer) -> TokenBytes:
        byte_of = _byte_of_char()
        special = set(tokenizer.all_special_ids)
        return cls({token: _piece_bytes(piece, byte_of) for piece, token in tokenizer.get_vocab().items()
                    if token not in special})


_TOKEN_BYTES: dict[int, tuple[object, TokenBytes]] = {}


def token_bytes(tokenizer) -> TokenBytes:
    """The tokenizer's :class:`TokenBytes`, built once (~0.3 s for a 49k vocabulary)."""
    key = id(tokenizer)
    if key not in _TOKEN_BYTES or _TOKEN_BYTES[key][0] is not tokenizer:
        _TOKEN_BYTES[key] = (tokenizer, TokenBytes.of_tokenizer(tokenizer))
    return _TOKEN_BYTES[key][1]


def _word_char(b: int) -> bool:
    return chr(b).isalnum() or b >= 0x80  # bytes of non-ASCII characters count as letters


def _other_case(data: bytes) -> bytes:
    """``data`` with its first byte in the other case (ASCII letters; anything else unchanged)."""
    return data[:1].swapcase() + data[1:]


class QuoteConstraint:
    """Replies that quote ``spans`` (from a word's start to a word's end) or say one of ``wholes``
    from start to end, the first letter in either case. ``stop_ids`` end a reply where that is allowed."""

    def __init__(self, vocab: TokenBytes, spans: Sequence[str], wholes: Sequence[str],
                 stop_ids: Sequence[int]):
        self.vocab, self.stop_ids = vocab, tuple(stop_ids)
        self.sources = [s.encode() for s in (*spans, *wholes)]
        self.whole = [False] * len(spans) + [True] * len(wholes)
        self.starts = frozenset((i, p) for i, src in enumerate(self.sources) for p in range(len(src))
                                if self._starts_at(i, p))

    def _starts_at(self, i: int, p: int) -> bool:
        """Whether a reply may begin at byte ``p`` of source ``i``: a whole text's start; a word's start
        in a span, or the space before it (a tokenizer may begin the reply with a spaced token)."""
        src = self.sources[i]
        if self.whole[i]:
            return p == 0

        def word_start(q: int) -> bool:
            return q < len(src) and _word_char(src[q]) and (q == 0 or not _word_char(src[q - 1]))

        return word_start(p) or (src[p:p + 1] == b" " and word_start(p + 1))

    def _live(self, state: State) -> frozenset:
        return self.starts if state is START else state

    def may_end(self, state: State) -> bool:
        if state is START:
            return False
        for i, p in state:
            src = self.sources[i]
            if p == len(src) or (not self.whole[i] and not _word_char(src[p])):
                return True
        return False

    def allowed(self, state: State) -> list[int]:
        """The token ids that keep the reply a quote (stop tokens where it may end here)."""
        ids: set[int] = set()
        for i, p in self._live(state):
            src = self.sources[i]
            for k in range(1, min(self.vocab.longest, len(src) - p) + 1):
                ids.update(self.vocab.ids_of.get(src[p:p + k], ()))
                if state is START:
                    ids.update(self.vocab.ids_of.get(_other_case(src[p:p + k]), ()))
        if self.may_end(state):
            ids.update(self.stop_ids)
        return sorted(ids)

    def advance(self, state: State, token: int) -> State:
        """The state after ``token``; an empty set where the token breaks the quote."""
        data = self.vocab.bytes_of.get(token)
        if data is None:
            return frozenset()  # a stop or special token: nothing may follow
        fits = (data, _other_case(data)) if state is START else (data,)
        return frozenset((i, p + len(data)) for i, p in self._live(state)
                         if self.sources[i][p:p + len(data)] in fits)

    def mask(self, logits: Tensor, state: State) -> Tensor:
        """``logits`` ([V] or [1, V]) with every token outside :meth:`allowed` at -inf; unchanged
        where nothing is allowed (a state no token can continue: the model writes freely)."""
        ids = [t for t in self.allowed(state) if t < logits.shape[-1]]
        if not ids:
            return logits
        keep = torch.full((logits.shape[-1],), float("-inf"), dtype=logits.dtype, device=logits.device)
        keep[torch.tensor(ids, device=logits.device)] = 0.0
        return logits + keep
