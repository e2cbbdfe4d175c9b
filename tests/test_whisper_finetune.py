"""Fine-tuning Whisper's decoder over its frozen encoder's window outputs (speechllm.whisper.finetune):
it learns, resumes onto the same weights, saves only the part it trains, and refuses another Whisper's."""

import numpy as np
import pytest
import torch

from speechllm.whisper import load_whisper
from speechllm.whisper.finetune import (
    Clip,
    DecoderTuning,
    decoder_weights,
    load_decoder_weights,
    speech_end,
    target_tokens,
    trained_parameters,
    tune_decoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from tiny_models import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))


def clips():
    t = np.arange(8000) / 16000
    return [Clip(f"clip{i}", text, samples=(0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t)).astype(np.float32))
            for i, text in enumerate(["hello", "paris", "a fox", "beep"])]


def test_training_lowers_the_loss_and_changes_only_the_tuned_part(tmp_path, tiny_whisper):
    model, tokenizer = load_whisper(tiny_whisper)
    with torch.no_grad():  # the random checkpoint's tied embedding (std 0.02) barely tells tokens apart
        model.decoder.token_embedding.weight.mul_(50)
    embedding = model.decoder.token_embedding.weight.clone()
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    before = {k: v.clone() for k, v in decoder_weights(model).items()}
    result = tune_decoder(model, tokenizer, clips(), tmp_path, DecoderTuning(steps=30, batch_size=4, lr=1e-2,
                                                                             warmup=2, progress=False))
    assert result.step == 30 and not result.skipped
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert torch.equal(model.decoder.token_embedding.weight, embedding)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, before[k]) for k, v in decoder_weights(model).items())
    assert set(decoder_weights(model)) == set(trained_parameters(model))
    assert not any(p.requires_grad for p in model.parameters())  # left as inference found it


def test_a_resumed_run_ends_on_the_weights_of_an_uninterrupted_one(tmp_path, tiny_whisper):
    from speechllm.checkpoints import checkpoint_folders

    options = DecoderTuning(steps=6, batch_size=3, lr=1e-3, warmup=2, eval_every=3, save_every=4,
                            progress=False)
    whole, tokenizer = load_whisper(tiny_whisper)
    tune_decoder(whole, tokenizer, clips(), tmp_path / "whole", options)
    assert [f.name for f in checkpoint_folders(tmp_path / "whole")] == ["step-0000004", "step-0000006"]
    cut, _ = load_whisper(tiny_whisper)
    from dataclasses import replace

    tune_decoder(cut, tokenizer, clips(), tmp_path / "cut", replace(options, steps=3))
    resumed, _ = load_whisper(tiny_whisper)
    seen = []
    result = tune_decoder(resumed, tokenizer, clips(), tmp_path / "cut", options, resume=True,
                          evaluate=lambda step: seen.append(step) or {"wer": 0.5})
    assert seen == [6] and result.evals == ({"step": 6, "wer": 0.5},) and len(result.losses) == 3
    for name, tensor in decoder_weights(whole).items():
        torch.testing.assert_close(decoder_weights(resumed)[name], tensor, rtol=0, atol=1e-6)


def test_weights_of_another_whisper_are_refused_by_name(tmp_path, tiny_whisper):
    from tiny_models import make_tiny_whisper

    model, _ = load_whisper(tiny_whisper)
    wider, _ = load_whisper(make_tiny_whisper(tmp_path / "wider", d_model=64))
    with pytest.raises(ValueError, match="another model size"):
        load_decoder_weights(model, decoder_weights(wider), "wider.safetensors")
    partial = dict(decoder_weights(model))
    partial.pop("ln.weight")
    with pytest.raises(ValueError, match="missing tensor ln.weight"):
        load_decoder_weights(model, partial)


def test_clips_the_decoder_cannot_take_are_left_out_with_the_reason(tmp_path, tiny_whisper):
    model, tokenizer = load_whisper(tiny_whisper)
    items = clips() + [Clip("long.wav", "a b c d e f g h i j k l m n o p q r", samples=clips()[0].samples),
                       Clip("es.wav", "hola", language="es", samples=clips()[0].samples)]
    options = DecoderTuning(steps=1, batch_size=2, progress=False)
    result = tune_decoder(model, tokenizer, items, tmp_path, options)
    assert len(result.skipped) == 2 and result.skipped[0].startswith("long.wav: ")
    assert "over the decoder's 32" in result.skipped[0]
    assert result.skipped[1] == "es.wav: this model is English-only: it transcribes English and nothing else"


def test_no_clip_left_says_why_once_per_reason(tmp_path, tiny_whisper):
    model, tokenizer = load_whisper(tiny_whisper)
    items = [Clip(f"{i}.wav", "hola", language="es", samples=clips()[0].samples) for i in range(3)]
    with pytest.raises(ValueError) as info:
        tune_decoder(model, tokenizer, items, tmp_path, DecoderTuning(steps=1, progress=False))
    assert str(info.value) == ("no clip left to train Whisper's decoder on (3 left out: 3 x this model is "
                               "English-only: it transcribes English and nothing else)")


def test_targets_in_both_of_whispers_forms(tiny_whisper):
    from speechllm.zoo import resolve

    _, tokenizer = load_whisper(resolve("whisper-tiny.en").path)
    timed, prompt = target_tokens(tokenizer, "Hello there.", None, 1.234)
    assert timed[:prompt] == [tokenizer.sot]
    assert timed[prompt] == tokenizer.timestamp_begin and timed[-2] == tokenizer.timestamp_begin + 62
    assert tokenizer.decode(timed[prompt + 1:-2]) == " Hello there." and timed[-1] == tokenizer.eot
    untimed, prompt = target_tokens(tokenizer, " Hello there.", None, None)
    assert untimed[:prompt] == [tokenizer.sot, tokenizer.no_timestamps]
    assert tokenizer.decode(untimed[prompt:-1]) == " Hello there."


def test_speech_end_is_where_the_sound_stops():
    t = np.arange(16000) / 16000
    audio = np.where(t < 0.62, 0.3 * np.sin(2 * np.pi * 200 * t), 1e-4 * np.sin(2 * np.pi * 50 * t))
    assert abs(speech_end(audio.astype(np.float32)) - 0.62) <= 0.02


def test_a_multilingual_whisper_trains_each_clip_in_its_language(tmp_path, monkeypatch):
    """A clip's own language (a locale read as its code), else the one the Whisper detects in it."""
    import json

    from tiny_models import make_tiny_whisper

    from speechllm.whisper import decoding
    from speechllm.whisper.model import WhisperConfig
    from speechllm.whisper.tokenizer import WhisperTokenizer

    folder = make_tiny_whisper(tmp_path / "whisper")
    specials = ["<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    (folder / "added_tokens.json").write_text(json.dumps({t: 51 + i for i, t in enumerate(specials)}))
    model, tokenizer = load_whisper(folder)
    monkeypatch.setattr(WhisperConfig, "is_multilingual", property(lambda self: True))
    tokenizer = WhisperTokenizer(tokenizer.tokenizer, multilingual=True)
    detected = []

    def detect(model, tokenizer, audio):
        detected.append(len(audio))
        return [{"de": 0.9, "en": 0.1}] * len(audio)

    monkeypatch.setattr(decoding, "detect_language", detect)
    items = [*clips()[:2], Clip("en.wav", "hello", language="EN", samples=clips()[2].samples),
             Clip("at.wav", "hallo", language="de_AT", samples=clips()[3].samples),
             Clip("xx.wav", "hallo", language="xx", samples=clips()[3].samples)]
    result = tune_decoder(model, tokenizer, items, tmp_path / "out", DecoderTuning(steps=1, batch_size=2,
                                                                                   progress=False))
    assert result.languages == {"de": 3, "en": 1} and detected == [2]
    assert result.skipped == ("xx.wav: unknown language 'xx'; known: en, de",)
    options = DecoderTuning(steps=1, batch_size=2, language="en", progress=False)
    given = tune_decoder(model, tokenizer, items, tmp_path / "given", options)
    assert given.languages == {"en": 3, "de": 1} and detected == [2]  # nothing left to detect


def test_frames_from_an_encoder_cache_train_as_those_held_in_memory(tmp_path, tiny_whisper):
    """With an encoder cache each step reads its clips' frames back from the cache folder; the weights
    come out as from frames held in memory, and a second run encodes nothing."""
    import soundfile

    from speechllm.encoder_cache import EncoderCache

    files = []
    for clip in clips():
        path = tmp_path / f"{clip.audio}.wav"
        soundfile.write(path, clip.samples, 16000)
        files.append(Clip(str(path), clip.text))
    options = DecoderTuning(steps=3, batch_size=2, lr=1e-3, warmup=1, progress=False)
    held, tokenizer = load_whisper(tiny_whisper)
    tune_decoder(held, tokenizer, files, tmp_path / "held", options)
    cache = EncoderCache(tmp_path / "cache", "tiny|30 s window")
    for run in ("first", "second"):
        cached, _ = load_whisper(tiny_whisper)
        tune_decoder(cached, tokenizer, files, tmp_path / run, options, cache=cache)
        for name, tensor in decoder_weights(held).items():
            assert torch.equal(decoder_weights(cached)[name], tensor)
    assert (cache.misses, cache.hits) == (4, 4)
