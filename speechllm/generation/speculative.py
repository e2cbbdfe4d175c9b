"""Drafts for speculative decoding from a suffix automaton (SAM-Decoding, Hu et al., 2024).

A reply that copies from its input (a passage answer, a transcript, a quote) repeats runs of
tokens that are already in the prompt or earlier in the reply. :class:`SuffixAutomaton` holds
every substring of prompt + reply so far (built online, linear in their length);
:class:`SamDrafter` follows the reply in it, keeping the longest suffix of the reply that occurred
before, and proposes the tokens that followed that earlier occurrence. The LLM then checks the
draft in one forward pass (:func:`speechllm.generation.decoders.token_stream`): the reply is
greedy's, token for token, however good or bad the draft.
"""

from __future__ import annotations

from collections.abc import Iterable


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


class SamDrafter:
    """Follows a token stream in its own :class:`SuffixAutomaton`; :meth:`draft` proposes what
    followed the longest suffix of the stream seen before."""

    def __init__(self, prompt: Iterable[int] = (), min_match: int = 2):
        self.sam = SuffixAutomaton()
        self.min_match = min_match
        self.state = self.matched = 0
        for token in prompt:
            self.append(token)

    def append(self, token: int) -> None:
        """The next token of the stream: matched against what came before it, then added."""
        sam, s, n = self.sam, self.state, self.matched
        while s and token not in sam.next[s]:
            s = sam.link[s]
            n = sam.length[s]
        if token in sam.next[s]:
            s, n = sam.next[s][token], n + 1
        else:
            s, n = 0, 0
        self.state, self.matched = s, n
        sam.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the current match's first occurrence."""
        if self.matched < self.min_match or k <= 0:
            return []
        start = self.sam.end[self.state] + 1
        return self.sam.tokens[start:start + k]
