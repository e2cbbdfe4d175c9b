"""Why a reply ended: end token, repetition guard, or length budget."""

import pytest

from speechllm.speechlm.generate import GenerationOptions, RepetitionGuard


@pytest.mark.parametrize("tokens, keep", [
    ([5, 6] + [7, 8] * 6, 4),  # "M. M. M. ...": the loop's first pass stays
    ([1, 2, 3, 4, 5] * 3, 5),  # a sentence said three times
    ([9] * 12, 1),
])
def test_guard_cuts_a_loop_after_its_first_pass(tokens, keep):
    assert RepetitionGuard().cut(tokens) == keep


@pytest.mark.parametrize("tokens", [
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    [7, 8] * 5,  # ten tokens: shorter than the guard's span
    [1, 2, 3, 1, 2, 3, 4, 1, 2, 3],
    [3, 3, 3, 4, 4, 4, 5, 5, 5],
])
def test_guard_leaves_ordinary_text_alone(tokens):
    assert RepetitionGuard().cut(tokens) is None


def test_options_switch_the_guard():
    assert GenerationOptions().stop_repetition
    assert not GenerationOptions(stop_repetition=False).stop_repetition


def test_replies_and_transcript_rows_say_why_they_ended(tmp_path):
    import numpy as np
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig
    from speechllm.speechlm.generate import STOP_REASONS
    from speechllm.speechlm.transcriber import TOKENS_MIN, SpeechLLMTranscriber

    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "w")),
                             llm=str(make_tiny_llm(tmp_path / "l")), adapter="linear")
    model = SpeechLLM.build(config).eval()
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    out = model.generate([clip], "Say something.", GenerationOptions(max_new_tokens=3, stop_repetition=False))
    assert out[0].stop in ("end", "length") and (out[0].stop == "end" or len(out[0].tokens) == 3)
    looping = model.generate([clip], "Say something.", GenerationOptions(max_new_tokens=60))[0]
    assert looping.stop in STOP_REASONS and len(looping.tokens) <= 60
    # a random tiny LM loops or runs long; a translation's budget follows the audio (1 s: the floor)
    translator = SpeechLLMTranscriber(model, task="translate", max_new_tokens=500, segmenter="fixed")
    budgets, generate = [], model.generate
    model.generate = lambda audio, text, options: budgets.append(options.max_new_tokens) or generate(
        audio, text, options)
    result = translator.transcribe(clip)
    assert result.stop in STOP_REASONS and budgets == [TOKENS_MIN]
    answerer = SpeechLLMTranscriber(model, task="spoken-question", max_new_tokens=500, segmenter="fixed")
    answerer.transcribe(clip)
    assert budgets[-1] == 500  # an answer's length does not follow the question's


def test_a_stream_holds_back_a_forming_loop_and_never_shows_beyond_the_cut():
    guard = RepetitionGuard()
    assert guard.held([1, 2, 3, 4]) == 0 and guard.held([1, 2, 3, 2, 3]) == 2 and guard.held([4, 1, 4]) == 1
    for tokens in ([5, 6] + [7, 8] * 6, [1, 2, 3, 4, 5] * 3, [9] * 12, [3, 1, 4, 1, 5] + [9, 2, 6] * 5):
        end = next(n for n in range(1, len(tokens) + 1) if guard.cut(tokens[:n]) is not None)
        cut = guard.cut(tokens[:end])
        assert all(n - guard.held(tokens[:n]) <= cut for n in range(1, end + 1)), tokens
