import random
import time

import numpy as np
import pytest

from speechllm.metrics import char_error_rate, reference_edit_distance, word_error_rate
from speechllm.metrics_bleu import corpus_bleu
from speechllm.text_normalize import get_normalizer


def test_wer_counts_after_normalisation():
    wer = word_error_rate(["The train leaves at seven o'clock."], ["the train leaves at 7 o'clock"])
    assert wer.errors == 0 and wer.total == 6
    wer = word_error_rate(["a b c d", "e f"], ["a x c", "e f g"])
    assert (wer.errors, wer.total) == (3, 6) and wer.rate == pytest.approx(0.5)


def test_cer_and_mismatched_lengths():
    assert char_error_rate(["abc"], ["abd"]).errors == 1
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_wer_of_a_3000_word_pair_is_fast_and_counts_every_edit():
    rng = random.Random(0)
    words = [rng.choice(["alpha", "beta", "gamma", "delta", "echo"]) for _ in range(3000)]
    hyp = list(words)
    for i in range(0, 3000, 10):  # 300 substitutions, each to a word no reference has
        hyp[i] = "zulu"
    started = time.perf_counter()
    wer = word_error_rate([" ".join(words)], [" ".join(hyp)])
    # jiwer + normalisation: 0.25 s on 2 busy cores, where the old pure-Python DP took 24 s (5.4 s idle)
    assert time.perf_counter() - started < 2.0
    assert (wer.errors, wer.total) == (300, 3000)


def test_empty_sides():
    assert (word_error_rate([""], ["a b"]).errors, word_error_rate([""], ["a b"]).total) == (2, 0)
    assert word_error_rate(["a b"], [""]).rate == 1.0
    assert word_error_rate([], []).rate == 0.0


def test_bleu_is_sacrebleus_with_its_signature():
    # the example: no 4-gram in common with a plain count, 30.74 with sacrebleu's smoothing
    score = corpus_bleu(["the cat sat on the mat today"], ["the cat sat in a mat today"])
    assert round(score.score, 2) == 30.74
    assert score.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert score.signature in str(score)
    assert corpus_bleu(["the cat is on the mat"], ["the cat is on the mat"]).score == pytest.approx(100)
    assert corpus_bleu(["the cat is on the mat"], ["a dog"]).score < 1
    two = corpus_bleu(["The cat sat on the mat.", "It is raining today in the city."],
                      ["The cat sat on a mat.", "It rains today in the city."])
    assert two.brevity_penalty == pytest.approx(np.exp(1 - 15 / 14)) and 50 < two.score < 56
    assert corpus_bleu(["The Cat"], ["the cat"], lowercase=True).signature.startswith("nrefs:1|case:lc")
    with pytest.raises(ValueError, match="1 references but 2 hypotheses"):
        corpus_bleu(["a"], ["a", "b"])


@pytest.mark.parametrize(("text", "expected"), [  # from openai-whisper's tests/test_normalizer.py
    ("Let's", "let us"),
    ("he's like", "he is like"),
    ("she's been like", "she has been like"),
    ("10km", "10 km"),
    ("RC232", "rc 232"),
    ("Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"),
    ("nineteen ninety nine", "1999"),
    ("two point five million", "2500000"),
    ("ninety percent", "90%"),
    ("two dollars and seventy cents", "$2.70"),
    ("july third twenty twenty", "july 3rd 2020"),
    ("mobilisation", "mobilization"),
    ("Um, the colour [laughs] is uh red.", "the color is red"),
])
def test_whisper_english_normalizer(text, expected):
    assert get_normalizer("whisper")(text) == expected


def test_normalizer_choice_changes_what_counts_as_an_error():
    ref, hyp = ["The colour cost twenty dollars."], ["the color cost $20"]
    assert word_error_rate(ref, hyp, normalizer="whisper").errors == 0
    assert word_error_rate(ref, hyp, normalizer="spoken").errors == 1  # colour/color
    assert word_error_rate(ref, hyp, normalizer="none").errors == 4
    with pytest.raises(ValueError, match="unknown normalizer 'nope'"):
        word_error_rate(ref, hyp, normalizer="nope")


def test_jiwer_counts_equal_the_old_dynamic_programme():
    rng = random.Random(1)
    refs, hyps = [], []
    for _ in range(300):
        refs.append(" ".join(rng.choice("ab cd ef gh".split()) for _ in range(rng.randint(1, 12))))
        hyps.append(" ".join(rng.choice("ab cd ef xy".split()) for _ in range(rng.randint(0, 12))))
    wer = word_error_rate(refs, hyps)
    pairs = list(zip(refs, hyps, strict=True))
    assert wer.errors == sum(reference_edit_distance(r.split(), h.split()) for r, h in pairs)
    assert wer.total == sum(len(r.split()) for r in refs)
    cer = char_error_rate(refs, hyps)
    assert cer.errors == sum(reference_edit_distance(list(r.replace(" ", "")), list(h.replace(" ", "")))
                             for r, h in zip(refs, hyps, strict=True))
