"""Text checks and segmentation for synthesis: what the TTS voices can say, in pieces they can say.

:func:`prepare_text` turns user text into its spoken form (numbers, money, times in words), folds
accents and typographic marks to ASCII, drops characters no voice can say (emoji, other scripts)
and refuses, with a one-line reason, text that is empty, has nothing speakable left, or is absurdly
long. :func:`sentences` cuts text into sentences short enough for one LM pass, and
:func:`sentence_streams` does the same lazily on a stream of text pieces (an LLM's tokens).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from speechllm.text_normalize import clean_unicode, spoken_form

MAX_CHARS = 100_000  # refuse beyond this (about 2 hours of speech); stream long text instead
MAX_WORDS = 40  # longest piece given to the LM at once; longer sentences are cut at commas/spaces
_KEEP = re.compile(r"[^A-Za-z0-9 .,;:!?'\"()\-]")
_SENTENCE_END = re.compile(r"[.!?]+[\"')]*$")


class TextError(ValueError):
    """Text that cannot be spoken; the message says why."""


def fold_ascii(text: str) -> str:
    """Accents off (é → e), typographic marks to ASCII, every other non-ASCII character dropped."""
    text = clean_unicode(text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"(?<=[A-Za-z]):(?=[A-Za-z])", " ", _KEEP.sub(" ", text))
    return re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s+", " ", text)).strip()


def prepare_text(text: object, max_chars: int = MAX_CHARS) -> str:
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError("empty text: nothing to say")
    if len(text) > max_chars:
        raise TextError(f"text is {len(text):,} characters, over the limit of {max_chars:,}; "
                        "split it or stream it in pieces")
    spoken = fold_ascii(spoken_form(text))
    if not re.search(r"[A-Za-z]", spoken):
        raise TextError(f"nothing speakable in {text[:40]!r}: no letters or numbers after "
                        "dropping unsupported characters")
    return spoken


def _cut_long(words: list[str]) -> Iterator[list[str]]:
    while len(words) > MAX_WORDS:
        commas = [i for i, w in enumerate(words[:MAX_WORDS]) if w.endswith((",", ";", ":"))]
        cut = commas[-1] + 1 if commas and commas[-1] >= MAX_WORDS // 3 else MAX_WORDS
        yield words[:cut]
        words = words[cut:]
    if words:
        yield words


def sentences(text: str) -> list[str]:
    """Sentences (and pieces of over-long ones) of already prepared text."""
    out, current = [], []
    for word in text.split():
        current.append(word)
        if _SENTENCE_END.search(word):
            out += [" ".join(p) for p in _cut_long(current)]
            current = []
    out += [" ".join(p) for p in _cut_long(current)]
    return [s for s in out if re.search(r"[A-Za-z]", s)]


def sentence_streams(pieces: Iterable[str]) -> Iterator[Iterator[str]]:
    """A stream of text pieces → a stream of sentences, each a lazy stream of words (" word" pieces).

    A sentence's words come out as soon as they are complete (a space or the end follows), so
    synthesis of a sentence can start before its end has arrived.
    """
    words = _words(pieces)
    lookahead: list[str] = []

    def one_sentence() -> Iterator[str]:
        count = 0
        while True:
            word = lookahead.pop() if lookahead else next(words, None)
            if word is None:
                return
            count += 1
            yield (" " if count > 1 else "") + word
            if _SENTENCE_END.search(word) or (count >= MAX_WORDS and word.endswith((",", ";", ":"))) \
                    or count >= MAX_WORDS + 10:
                return

    while True:
        first = next(words, None)
        if first is None:
            return
        lookahead.append(first)
        yield one_sentence()


def _words(pieces: Iterable[str]) -> Iterator[str]:
    """Complete, prepared words from arbitrary text pieces."""
    buffer = ""
    for piece in pieces:
        if not isinstance(piece, str):
            raise TextError(f"text pieces must be strings, got {type(piece).__name__}")
        buffer += piece
        if len(buffer) > MAX_CHARS:
            raise TextError(f"a single word of over {MAX_CHARS:,} characters: nothing to say")
        *done, buffer = re.split(r"\s+", buffer)
        for word in done:
            yield from _prepared(word)
    yield from _prepared(buffer)


def _prepared(word: str) -> Iterator[str]:
    if not word.strip():
        return
    spoken = fold_ascii(spoken_form(word))
    for w in spoken.split():
        if re.search(r"[A-Za-z]", w) or _SENTENCE_END.search(w):
            yield w
