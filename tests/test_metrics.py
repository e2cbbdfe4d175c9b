import pytest

from speechllm.metrics import char_error_rate, edit_distance, word_error_rate


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1 and edit_distance(["a"], []) == 1


def test_wer_counts_after_normalisation():
    wer = word_error_rate(["The train leaves at seven o'clock."], ["the train leaves at 7 o'clock"])
    assert wer.errors == 0 and wer.total == 6
    wer = word_error_rate(["a b c d", "e f"], ["a x c", "e f g"])
    assert (wer.errors, wer.total) == (3, 6) and wer.rate == pytest.approx(0.5)


def test_cer_and_mismatched_lengths():
    assert char_error_rate(["abc"], ["abd"]).errors == 1
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])
