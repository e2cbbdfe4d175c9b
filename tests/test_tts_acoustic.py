"""The own voice's phoneme route: teacher durations, the distilled cache, the acoustic model, its folder."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from speechllm.tts.acoustic import AcousticConfig, AcousticModel, overlap_weights
from speechllm.tts.vocoder import VocoderConfig, Vocos
from speechllm.zoo import ModelNotFoundError, resolve

TINY = AcousticConfig(
    dim=16, encoder_blocks=1, attention_layers=1, decoder_dilations=(1, 2), duration_channels=8
)


def _has_teacher() -> bool:
    try:
        resolve("piper-joe", download=False)
    except ModelNotFoundError:
        return False
    return all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx")) and bool(
        shutil.which("espeak-ng")
    )


needs_teacher = pytest.mark.skipif(
    not _has_teacher(), reason="piper-joe, onnx, onnxruntime or espeak-ng missing"
)


def test_overlap_weights_split_frames_by_fractional_durations():
    durations = torch.tensor([[0.5, 1.0, 1.5]])  # ends at 0.5, 1.5, 3.0 frames
    weights, inside = overlap_weights(durations, torch.arange(3)[None])
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    assert torch.allclose(weights[0], expected)
    assert torch.allclose(inside[0, 2], torch.tensor((2.5 - 1.5) / 1.5))


def test_acoustic_model_learns_a_batch_and_synthesises():
    torch.manual_seed(0)
    model = AcousticModel(TINY)
    ids = torch.randint(1, 50, (2, 7))
    id_mask = torch.ones(2, 7, dtype=torch.bool)
    id_mask[1, 5:] = False
    durations = torch.rand(2, 7) * 3 * id_mask
    n = int(durations.sum(1).max().ceil())
    frames = torch.arange(n)[None].repeat(2, 1)
    frame_mask = frames < durations.sum(1, keepdim=True)
    mel = torch.randn(2, n, 80) - 5
    model.set_mel_stats(mel.reshape(-1, 80))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss, parts = model.loss(ids, id_mask, durations, frames, frame_mask, mel)
        first = first if first is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.7 * first and set(parts) == {"mel_l1", "dur_mse"}
    out = model.synthesize(ids[0])
    assert out.shape[0] == 80 and out.shape[1] >= 1 and torch.isfinite(out).all()
    assert model.synthesize(ids[0], speed=2.0).shape[1] < model.synthesize(ids[0], speed=0.5).shape[1]


@pytest.fixture(scope="module")
def acoustic_voice_dir(tmp_path_factory):
    from speechllm.tts.synthesize import save_acoustic_tts

    folder = tmp_path_factory.mktemp("acoustic-voice")
    id_map = {c: [i + 1] for i, c in enumerate("^_$ abcdefghijklmnopqrstuvwxyzəɪʊˈˌɹæɛɔʌɑŋθðʃʒː.,!?")}
    torch.manual_seed(0)
    model = AcousticModel(TINY)
    with torch.no_grad():
        model.durations.out.bias.fill_(1.1)  # about two frames per id: audible, speed-sensitive lengths
    save_acoustic_tts(
        folder,
        model,
        Vocos(VocoderConfig(dim=16, ffn=32, n_layers=1)),
        {"espeak_voice": "en-us", "phoneme_id_map": id_map},
    )
    return folder


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_acoustic_folder_streams_exactly_what_it_synthesises_whole(acoustic_voice_dir):
    from speechllm import tts
    from speechllm.tts.synthesize import AcousticTTS

    voice = tts.load(str(acoustic_voice_dir))
    assert isinstance(voice, AcousticTTS) and voice.sample_rate == 16_000
    text = "Hello there. How are you today, my friend?"
    whole = voice.synthesize(text)
    chunks = list(voice.synthesize(text, stream=True))
    assert len(chunks) > 2 and all(c.dtype == np.float32 for c in chunks)
    assert len(whole) % 320 == 0 and np.allclose(np.concatenate(chunks), whole, atol=1e-5)
    pieces = np.concatenate(
        list(voice.synthesize(iter(["Hello ", "there. How", " are you today, my friend?"])))
    )
    assert np.allclose(pieces, whole, atol=1e-5)
    with pytest.raises(tts.TextError):
        voice.synthesize("   ")


def test_unknown_folder_kind_is_refused(acoustic_voice_dir, tmp_path):
    from speechllm.tts.synthesize import load_tts_folder

    folder = tmp_path / "voice"
    shutil.copytree(acoustic_voice_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "kind": "diffusion"}))
    with pytest.raises(ValueError, match="unknown TTS folder kind 'diffusion'"):
        load_tts_folder(folder)


@needs_teacher
def test_teacher_durations_cover_its_audio():
    from speechllm.tts.piper import PiperVoice, phoneme_ids, phonemize

    voice = PiperVoice.load("piper-joe", durations=True)
    ids = phoneme_ids(phonemize("Hello there, how are you?")[0], voice.config.phoneme_id_map)
    audio, samples = voice.synthesize_ids_durations(ids, noise_scale=0.0, noise_w=0.0)
    assert samples.shape == (len(ids),) and samples.sum() == len(audio)
    again, _ = voice.synthesize_ids_durations(ids, noise_scale=0.0, noise_w=0.0)
    assert np.array_equal(audio, again)  # no noise: one target per sentence
    with pytest.raises(Exception, match="durations=True"):
        PiperVoice.load("piper-joe").synthesize_ids_durations(ids)


@needs_teacher
def test_distill_then_train_and_assemble_a_voice(tmp_path):
    from speechllm.data_recipes.distill import distill
    from speechllm.tts import load
    from speechllm.tts.data import load_corpus
    from speechllm.tts.train import main

    cache = tmp_path / "cache"
    counts = distill(cache, hours=0.05)
    assert set(counts) == {"train", "dev", "test"} and counts["train"] >= 1
    dev = load_corpus(cache, "dev")
    for mel, durations, ids in zip(dev.mel, dev.durations, dev.phonemes, strict=True):
        assert len(durations) == len(ids) and abs(float(durations.sum()) - len(mel)) < 1e-3
    assert distill(cache, hours=0.05) == counts  # resumes: every part is there already
    with pytest.raises(ValueError, match="other teacher"):
        distill(cache, hours=0.05, teacher="elsewhere.onnx")
    common = ["--cache", str(cache), "--steps", "2", "--batch-size", "2", "--log-every", "1"]
    options = json.dumps({"dim": 16, "encoder_blocks": 1, "attention_layers": 1, "decoder_dilations": [1]})
    assert (
        main(["--stage", "acoustic", "--out", str(tmp_path / "ac"), "--acoustic-options", options, *common])
        == 0
    )
    assert main(["--stage", "vocoder", "--out", str(tmp_path / "voc"), *common]) == 0
    assert (
        main(
            [
                "--stage",
                "assemble-acoustic",
                "--cache",
                str(cache),
                "--acoustic",
                str(tmp_path / "ac"),
                "--vocoder",
                str(tmp_path / "voc"),
                "--out",
                str(tmp_path / "voice"),
            ]
        )
        == 0
    )
    voice = load(str(tmp_path / "voice"))
    assert len(voice.synthesize("It works.")) > 0

    # the vocoder fine-tuned on the voice's own teacher-timed mels, starting from the voice's vocoder
    from safetensors.torch import load_file

    from speechllm.tts.train import aligned_mels, load_acoustic, trained_step

    aligned = aligned_mels(load_acoustic(str(tmp_path / "voice")), dev)
    assert [len(m) for m in aligned.mel] == [len(m) for m in dev.mel]
    first = voice.model.synthesize(dev.phonemes[0].long(), durations=dev.durations[0]).T
    assert torch.allclose(aligned.mel[0].float(), first[: len(dev.mel[0])].half().float())
    tuned = tmp_path / "voc-tuned"
    frozen = ["--acoustic", str(tmp_path / "voice"), "--vocoder", str(tmp_path / "voice"), "--lr", "0"]
    assert main(["--stage", "vocoder", "--out", str(tuned), *frozen, *common]) == 0
    start = load_file(tmp_path / "voice" / "vocoder.safetensors")
    assert all(torch.equal(start[k], v) for k, v in load_file(tuned / "model.safetensors").items())
    assert main(["--stage", "assemble-acoustic", "--cache", str(cache), "--acoustic", str(tmp_path / "voice"),
                 "--vocoder", str(tuned), "--out", str(tmp_path / "voice2")]) == 0
    assert trained_step(str(tmp_path / "voice2"), "acoustic") == 2
    assert len(load(str(tmp_path / "voice2")).synthesize("It works.")) > 0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_cli_speaks_with_an_acoustic_folder_at_a_chosen_speed(acoustic_voice_dir, tmp_path, capsys):
    import soundfile as sf

    from speechllm.apps.cli import main

    lengths = {}
    for speed in (0.5, 2.0):
        out = tmp_path / f"{speed}.wav"
        args = ["tts", "--text", "Hello there, my friend.", "--output", str(out), "--speed", str(speed)]
        assert main([*args, "--voice", str(acoustic_voice_dir)]) == 0
        audio, rate = sf.read(out)
        lengths[speed] = len(audio)
        assert rate == 16_000
    assert lengths[2.0] < lengths[0.5]
    capsys.readouterr()
    bad = ["tts", "--text", "Hi.", "--output", str(tmp_path / "x.wav"), "--speed", "9"]
    assert main(bad) == 1
    assert "--speed 9.0: give a rate between 0.25 and 4" in capsys.readouterr().err
