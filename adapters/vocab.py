"""CTC vocabularies, chosen by name (``CTC_VOCABS``): the blank is id 0, then characters
(``chars``) or the LLM tokenizer's own tokens (``llm``, optionally a subset of them).

The CTC adapters (``ctc``, ``alignformer``, ``ctc_posterior``) and the base adapter's
``ctc_vocabulary`` use these; they sit in their own module so that ``base`` needs nothing
from an adapter.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

BLANK = 0
CHARS = " 'abcdefghijklmnopqrstuvwxyz0123456789áéíóúüñ"

class CharVocab:
    """Blank is 0, then one id per character of ``CHARS``; text is lower-cased, unknown characters dropped."""

    def __init__(self, chars: str = CHARS):
        self.chars = chars
        self.ids = {c: i + 1 for i, c in enumerate(chars)}
        self.size = len(chars) + 1

    def encode(self, text: str) -> list[int]:
        text = " ".join(unicodedata.normalize("NFC", text).lower().split())
        return [self.ids[c] for c in text if c in self.ids]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


class TokenVocab:
    """The LLM tokenizer's ids shifted by one (blank is 0), or, with ``subset`` (LLM token ids),
    CTC id ``k`` is ``subset[k - 1]``.

    With a subset, a token outside it is respelt as the longest subset tokens that make up its
    text (``"Ġdecaffeinated"`` → ``"Ġde" "ca" "ff" "ein" "ated"``), so a small, well-trained
    vocabulary still writes any word; characters no subset token covers are dropped.
    """

    def __init__(self, tokenizer, subset: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.subset = None if subset is None else [int(i) for i in subset]
        self.index = None if subset is None else {t: k + 1 for k, t in enumerate(self.subset)}
        self.size = (len(tokenizer) if subset is None else len(self.subset)) + 1
        self._pieces: dict[str, int] | None = None
        self._respelt: dict[int, list[int]] = {}

    def llm_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(" ".join(text.split()), add_special_tokens=False)

    def respell(self, token: int) -> list[int]:
        """CTC ids of the subset tokens that spell LLM token ``token`` (greedy longest match)."""
        if token not in self._respelt:
            if self._pieces is None:
                strings = self.tokenizer.convert_ids_to_tokens(self.subset)
                self._pieces = {s: k + 1 for k, s in enumerate(strings)}
                self._longest = max(map(len, strings))
            text, out, i = self.tokenizer.convert_ids_to_tokens(int(token)), [], 0
            while i < len(text):
                for j in range(min(len(text), i + self._longest), i, -1):
                    if text[i:j] in self._pieces:
                        out.append(self._pieces[text[i:j]])
                        i = j
                        break
                else:
                    i += 1
            self._respelt[token] = out
        return self._respelt[token]

    def encode(self, text: str) -> list[int]:
        ids = self.llm_ids(text)
        if self.index is None:
            return [i + 1 for i in ids]
        return [k for i in ids for k in ([self.index[i]] if i in self.index else self.respell(i))]

    def decode(self, ids: list[int]) -> str:
        llm = [i - 1 if self.subset is None else self.subset[i - 1] for i in ids if i > 0]
        return self.tokenizer.decode(llm)

    def spoken_units(self) -> frozenset[int]:
        """CTC ids whose text has a letter or digit (not punctuation or spacing alone)."""
        if not hasattr(self, "_spoken"):
            self._spoken = frozenset(k for k in range(1, self.size)
                                     if any(c.isalnum() for c in self.decode([k])))
        return self._spoken


CTC_VOCABS: dict[str, Callable] = {"chars": lambda tokenizer: CharVocab(), "llm": TokenVocab}


def ctc_vocab(name: str, tokenizer=None) -> CharVocab | TokenVocab:
    if name not in CTC_VOCABS:
        raise ValueError(f"unknown CTC vocabulary {name!r} (known: {', '.join(CTC_VOCABS)})")
    return CTC_VOCABS[name](tokenizer)
