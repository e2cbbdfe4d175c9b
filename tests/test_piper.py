import importlib.util
import shutil

import numpy as np
import pytest

from speechllm.zoo import ModelNotFoundError, resolve


def _voice_folder():
    try:
        return resolve("piper-joe", download=False).path
    except ModelNotFoundError:
        return None


pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
    pytest.mark.skipif(_voice_folder() is None, reason="piper-joe voice bundle not installed"),
]


@pytest.fixture(scope="module")
def voice():
    from speechllm.tts.piper import PiperVoice

    return PiperVoice.load("piper-joe", threads=1, seed=1)


def test_config(voice):
    cfg = voice.config
    assert cfg.sample_rate == 22050 and voice.sample_rate == 22050
    assert cfg.espeak_voice == "en-us"
    assert (cfg.noise_scale, cfg.length_scale, cfg.noise_w) == (0.667, 1.0, 0.8)
    assert {"^", "$", "_", " ", ",", "."} <= set(cfg.phoneme_id_map)


def test_phonemize_keeps_clause_punctuation():
    from speechllm.tts.piper import phonemize

    sentences = phonemize("Hello, world. How are you?")
    assert len(sentences) == 2
    assert sentences[0].startswith("h") and sentences[0].endswith(".") and "," in sentences[0]
    assert sentences[1].endswith("?")
    assert "ˈ" in sentences[0]  # IPA stress marks, as Piper's voices expect
    assert phonemize("   ") == []


def test_phoneme_ids_are_padded_like_piper(voice):
    from speechllm.tts.piper import phoneme_ids

    m = voice.config.phoneme_id_map
    ids = phoneme_ids("ab", m)
    assert ids == [m["^"][0], m["_"][0], m["a"][0], m["_"][0], m["b"][0], m["_"][0], m["$"][0]]
    assert phoneme_ids("a\u2603b", m) == ids  # unknown symbols are skipped


def test_synthesize_plausible_speech(voice):
    audio = voice.synthesize("The quick brown fox jumps over the lazy dog.")
    seconds = len(audio) / voice.sample_rate
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert 1.5 < seconds < 5.0  # ~2.5 s for nine words
    rms = float(np.sqrt(np.mean(audio**2)))
    assert 0.01 < rms < 0.5 and np.abs(audio).max() <= 1.0
    frames = audio[: len(audio) // 400 * 400].reshape(-1, 400)
    energy = np.sqrt((frames**2).mean(axis=1))
    assert (energy > 0.01).mean() > 0.5  # mostly voiced, not silence or a click
    assert voice.synthesize("").size == 0


def test_same_seed_same_audio():
    from speechllm.tts.piper import PiperVoice

    a = [PiperVoice.load(seed=5).synthesize("Seeded speech.") for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_voices_engine_resamples_to_16k():
    from speechllm.tts import speakers as voices

    speaker = voices.Speaker.parse("piper:joe")
    voices.check_speakers([speaker])
    audio = voices.synthesize(speaker, "Hello there.")
    assert 0.4 < len(audio) / 16000 < 2.5


def test_every_voice_with_a_rate_control_speaks_at_a_chosen_speed(tmp_path, capsys):
    """tts.at_speed: Piper (its length scale), espeak speakers (words per minute); a voice without a
    rate control (flite) and a rate outside 0.25-4 are refused; the CLI's --speed reaches Piper too."""
    import soundfile as sf

    from speechllm import tts
    from speechllm.apps.cli import main

    text = "The weather will be sunny tomorrow, with a light breeze."
    for voice in (tts.load("piper-joe"), tts.load("espeak:en-us")):
        normal = len(voice.synthesize(text))
        faster = tts.at_speed(voice, 2.0)
        assert 0.4 * normal < len(faster.synthesize(text)) < 0.7 * normal
        assert len(np.concatenate(list(faster.synthesize(text, stream=True)))) < 0.7 * normal
        assert len(voice.synthesize(text)) > 0.85 * normal  # the voice itself is unchanged (Piper's noise_w
        # makes its durations vary a little from call to call)
        assert tts.at_speed(voice, 1.0) is voice
    with pytest.raises(ValueError, match="between 0.25 and 4"):
        tts.at_speed(tts.load("piper-joe"), 0.1)
    if shutil.which("flite"):
        with pytest.raises(tts.VoiceError, match="only espeak speakers"):
            tts.at_speed(tts.load("flite:slt"), 1.5)
    lengths = {}
    for speed in ("1", "2"):
        out = tmp_path / f"{speed}.mp3"
        args = ["tts", "--voice", "piper-joe", "--text", text, "--output", str(out), "--speed", speed]
        assert main(args) == 0
        audio, rate = sf.read(out)
        lengths[speed] = len(audio) / rate
    assert rate == 22050 and 0.4 * lengths["1"] < lengths["2"] < 0.7 * lengths["1"]
    capsys.readouterr()
