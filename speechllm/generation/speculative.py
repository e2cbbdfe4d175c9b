"""Drafts for speculative decoding from a suffix automaton (SAM-Decoding, Hu et al., 2024).

A reply that copies from its input (a passage answer, a transcript, a quote) repeats runs of
tokens that are already in the prompt or earlier in the reply. :class:`SuffixAutomaton` holds
every substring of prompt + reply so far (built online, linear in their length);
:class:`SamDrafter` follows the reply in it, keeping the longest suffix of the reply that occurred
before, and proposes the tokens that followed that earlier occurrence. The LLM then checks the
draft in one forward pass (:func:`speechllm.generation.decoders.token_stream`): the reply is
greedy's, token for token, however good or bad the draft.

What the prompt cannot propose (the model's own phrasing: "The passage states that", "The answer
is:") a :class:`PhraseBook` can: SAM-Decoding's static automaton, here over replies the model itself
wrote to other prompts (``python -m speechllm.data_recipes.phrase_book`` builds one). The drafter
follows the reply in both, and drafts from the prompt and reply when they match, else from the book.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from speechllm.files import atomic_save_tensors, load_tensors

SEPARATOR = -1  # before each reply of a phrase book: no draft runs across it


class SuffixAutomaton:
    """The minimal automaton of all substrings of a growing token sequence.

    State 0 is the root; each state has transitions (token → state), a suffix link, the length of
    its longest string and ``end``: where that state's strings first ended in :attr:`tokens`.
    """

    def __init__(self, tokens: Iterable[int] = ()):
        self.next: list[dict[int, int]] = [{}]
        self.link, self.length, self.end = [-1], [0], [-1]
        self.last = 0
        self.tokens: list[int] = []
        for token in tokens:
            self.append(token)

    def _new_state(self, length: int, end: int, link: int = -1, next_: dict[int, int] | None = None) -> int:
        self.next.append({} if next_ is None else dict(next_))
        self.link.append(link)
        self.length.append(length)
        self.end.append(end)
        return len(self.length) - 1

    def append(self, token: int) -> None:
        pos = len(self.tokens)
        self.tokens.append(token)
        cur = self._new_state(self.length[self.last] + 1, pos)
        p = self.last
        while p != -1 and token not in self.next[p]:
            self.next[p][token] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
        else:
            q = self.next[p][token]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self._new_state(self.length[p] + 1, self.end[q], self.link[q], self.next[q])
                while p != -1 and self.next[p].get(token) == q:
                    self.next[p][token] = clone
                    p = self.link[p]
                self.link[q] = self.link[cur] = clone
        self.last = cur


def follow(sam: SuffixAutomaton, state: int, matched: int, token: int) -> tuple[int, int]:
    """The state and match length after ``token``: the longest suffix of a stream (ending in ``token``)
    that is a substring of ``sam``'s tokens, given ``state`` / ``matched`` before it."""
    while state and token not in sam.next[state]:
        state = sam.link[state]
        matched = sam.length[state]
    if token in sam.next[state]:
        return sam.next[state][token], matched + 1
    return 0, 0


def continuation(sam: SuffixAutomaton, state: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the first occurrence of ``state``'s strings (up to a separator)."""
    start = sam.end[state] + 1
    out = sam.tokens[start:start + k]
    return out[:out.index(SEPARATOR)] if SEPARATOR in out else out


class PhraseBook:
    """A fixed automaton over replies a model wrote (token ids), shared by all the replies it drafts for."""

    def __init__(self, replies: Iterable[Sequence[int]]):
        self.sam = SuffixAutomaton()
        self.replies = 0
        for reply in replies:
            for token in (SEPARATOR, *reply):
                self.sam.append(int(token))
            self.replies += 1

    def __len__(self) -> int:
        return self.replies

    def save(self, path: str | Path, meta: dict[str, str] | None = None) -> None:
        """A safetensors file with one int32 tensor ``tokens``: the replies, each after a separator (-1)."""
        tokens = torch.tensor(self.sam.tokens, dtype=torch.int32)
        atomic_save_tensors({"tokens": tokens}, path, {"replies": str(self.replies), **(meta or {})})

    @classmethod
    def read(cls, path: str | Path) -> PhraseBook:
        tokens = load_tensors(path)["tokens"].tolist()
        if tokens and tokens[0] != SEPARATOR:
            raise ValueError(f"{path}: not a phrase book (its tokens must start with {SEPARATOR})")
        replies: list[list[int]] = []
        for token in tokens:
            if token == SEPARATOR:
                replies.append([])
            else:
                replies[-1].append(token)
        return cls(replies)


class SamDrafter:
    """Follows a token stream in its own :class:`SuffixAutomaton` (and a :class:`PhraseBook`, if any);
    :meth:`draft` proposes what followed the longest suffix of the stream seen before."""

    def __init__(self, prompt: Iterable[int] = (), min_match: int = 2, phrases: PhraseBook | None = None):
        self.sam = SuffixAutomaton()
        self.min_match = min_match
        self.state = self.matched = 0
        self.phrases = phrases
        self.phrase_state = self.phrase_matched = 0
        for token in prompt:
            self.append(token)

    def append(self, token: int) -> None:
        """The next token of the stream: matched against what came before it, then added."""
        self.state, self.matched = follow(self.sam, self.state, self.matched, token)
        self.sam.append(token)
        if self.phrases is not None:
            self.phrase_state, self.phrase_matched = follow(self.phrases.sam, self.phrase_state,
                                                            self.phrase_matched, token)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the current match's first occurrence: in the stream itself
        when it matches there (what the reply copies), else in the phrase book."""
        if k <= 0:
            return []
        if self.matched >= self.min_match:
            return continuation(self.sam, self.state, k)
        if self.phrases is not None and self.phrase_matched >= self.min_match:
            return continuation(self.phrases.sam, self.phrase_state, k)
        return []
