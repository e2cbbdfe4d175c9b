"""Quoted replies (QuoteConstraint): a reply may be any piece of what was heard from a word's start to a
word's end (its first letter in either case) or the refusal said whole, and nothing else."""

import random
import re

import pytest
from tiny_models import make_tiny_llm
from transformers import AutoTokenizer

from speechllm.generation.constraints import START, QuoteConstraint, TokenBytes, token_bytes

SOURCE = "Hello world, the weather will be sunny tomorrow. Paris at 5 a.m."
REFUSAL = "The recording does not say."
STOP = 999


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tiny_llm(tmp_path_factory.mktemp("llm")))


def _walk(constraint, ids):
    """The state after ``ids``, or None as soon as one of them is not allowed."""
    state = START
    for token in ids:
        if token not in constraint.allowed(state):
            return None
        state = constraint.advance(state, token)
    return state


def _said(constraint, tokenizer, text: str) -> bool:
    """Whether ``text``, however the tokenizer cuts it, may be a whole reply."""
    state = _walk(constraint, tokenizer(text, add_special_tokens=False).input_ids)
    return state is not None and constraint.may_end(state) and STOP in constraint.allowed(state)


def _word_spans(text: str) -> list[str]:
    words = list(re.finditer(r"\w+", text))
    return [text[a.start():b.end()] for i, a in enumerate(words) for b in words[i:]]


def test_every_word_bounded_span_and_the_refusal_may_be_said(tokenizer):
    quote = QuoteConstraint(token_bytes(tokenizer), [SOURCE], [REFUSAL], [STOP])
    spans = _word_spans(SOURCE)
    assert len(spans) > 50
    for span in spans:
        assert _said(quote, tokenizer, span), span
    for text in (REFUSAL, "the recording does not say.", "Sunny tomorrow.", "paris at 5 a.m.", "The weather"):
        assert _said(quote, tokenizer, text), text


@pytest.mark.parametrize("text", [
    "ello world",  # starts inside a word
    "sunny tomor",  # ends inside one
    "Hello World",  # a later letter in another case
    "SUNNY",
    "Rome",  # not heard
    "The recording",  # the refusal, cut short
    "sunny tomorrow. The recording does not say.",
    "",
])
def test_anything_else_may_not(tokenizer, text):
    quote = QuoteConstraint(token_bytes(tokenizer), [SOURCE], [REFUSAL], [STOP])
    assert not _said(quote, tokenizer, text)


def test_random_allowed_walks_end_as_quotes(tokenizer):
    vocab = token_bytes(tokenizer)
    quote = QuoteConstraint(vocab, [SOURCE], [REFUSAL], [STOP])
    spans = {s.lower() for s in _word_spans(SOURCE)}
    rng = random.Random(0)
    for _ in range(200):
        state, said = START, b""
        while True:
            token = rng.choice(quote.allowed(state))
            if token == STOP:
                break
            said += vocab.bytes_of[token]
            state = quote.advance(state, token)
        text = said.decode().lstrip()  # a reply may begin with the space before a word (stripped)
        assert text == REFUSAL or text[:1].swapcase() + text[1:] == REFUSAL or (
            text.lower() in spans or text.rstrip(".,").lower() in spans), text


def test_nothing_heard_leaves_only_the_refusal(tokenizer):
    quote = QuoteConstraint(token_bytes(tokenizer), [], [REFUSAL], [STOP])
    assert _said(quote, tokenizer, REFUSAL)
    assert not _said(quote, tokenizer, "Paris")


def test_token_bytes_read_byte_level_and_sentencepiece_pieces(tokenizer):
    vocab = token_bytes(tokenizer)
    assert token_bytes(tokenizer) is vocab  # built once per tokenizer
    ids = tokenizer(" weather", add_special_tokens=False).input_ids
    assert b"".join(vocab.bytes_of[i] for i in ids) == b" weather"
    assert not set(tokenizer.all_special_ids) & set(vocab.bytes_of)

    class Pieces:  # a SentencePiece vocabulary: "▁" for a space, "<0xNN>" byte fallbacks
        all_special_ids = [0]

        @staticmethod
        def get_vocab():
            return {"<s>": 0, "▁Bel": 1, "la": 2, "<0xC3>": 3, "<0xAB>": 4}

    pieces = TokenBytes.of_tokenizer(Pieces())
    assert pieces.bytes_of == {1: b" Bel", 2: b"la", 3: b"\xc3", 4: b"\xab"}
    quote = QuoteConstraint(pieces, ["Zoë and Bella"], [], [STOP])
    state = _walk(quote, [1, 2])
    assert state is not None and quote.may_end(state)
    assert _walk(quote, [3]) is None  # "ë" does not start a word here
