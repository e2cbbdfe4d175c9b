"""``speechllm finetune --train FOLDER --base MODEL``: import → validate → split → evaluate → train →
evaluate, end to end on a tiny speech-LLM, with resume and line-numbered data errors."""

import json

import numpy as np
import pytest
import soundfile
import torch

from speechllm.apps.cli import main
from speechllm.apps.finetune import DataOptions, prepare_data, split_eval
from speechllm.manifest import ManifestError, ManifestRow, read_manifest

TEXTS = ["hello world", "paris", "the weather will be sunny tomorrow", "a quick brown fox", "tone noise beep",
         "one two three", "what is the capital of france", "hello paris"]


pytestmark = pytest.mark.usefixtures("one_thread")


def recordings(folder, n=None):
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16000
    for i, text in enumerate(TEXTS[: n or len(TEXTS)]):
        audio = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
        soundfile.write(folder / f"utt{i:02d}.wav", audio.astype(np.float32), 16000)
        (folder / f"utt{i:02d}.txt").write_text(text + "\n")
    return folder


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, save_speechlm

    root = tmp_path_factory.mktemp("base")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(root / "whisper")), adapter="linear",
                             llm=str(make_tiny_llm(root / "llm")), adapter_options={"hidden_dim": 32})
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), root / "model")


def test_split_is_seeded_and_keeps_order():
    rows = [ManifestRow(audio=f"{i}.wav", text=str(i)) for i in range(20)]
    train, held = split_eval(rows, 0.1, seed=3)
    assert len(held) == 2 and len(train) == 18 and sorted(train + held, key=lambda r: int(r.text)) == rows
    assert split_eval(rows, 0.1, seed=3) == (train, held)
    with pytest.raises(ValueError, match="need at least 2"):
        split_eval(rows[:1], 0.5, 0)


def test_bad_items_are_listed_before_anything_loads(tmp_path, capsys):
    data = recordings(tmp_path / "rec", 5)
    (data / "utt01.wav").write_bytes(b"not audio" * 30)
    (data / "utt02.txt").unlink()
    (data / "utt03.txt").write_text("  \n")
    with pytest.raises(ManifestError) as info:
        prepare_data(str(data), None, tmp_path / "out", DataOptions(progress=False))
    lines = info.value.errors
    assert any(str(data / "utt01.wav") in l and "unreadable" in l for l in lines)
    assert any(str(data / "utt02.wav") in l and "no transcript utt02.txt" in l for l in lines)
    assert any(str(data / "utt03.txt") in l and "empty transcript" in l for l in lines)
    assert not (tmp_path / "out").exists()
    # a manifest keeps its own line numbers
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(data / "utt00.wav"), "text": "hi"}) + "\n"
                        + json.dumps({"audio": str(data / "nope.wav"), "text": "x"}) + "\n{bad json\n")
    assert main(["finetune", "--train", str(manifest), "--base", "x", "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert f"{manifest}:2:" in err and f"{manifest}:3: bad JSON" in err
    # with an eval set given, the manifests are checked before the base model is looked at
    assert main(["finetune", "--train", str(manifest), "--eval", str(manifest), "--base", "no-such-model",
                 "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert f"{manifest}:3: bad JSON" in err and "no-such-model" not in err
    # --skip-bad trains without them
    prepared = prepare_data(str(data), None, tmp_path / "out", DataOptions(skip_bad=True, progress=False))
    assert len(read_manifest(prepared.train)) == 1 and len(read_manifest(prepared.eval)) == 1
    assert "3 bad item(s) left out" in prepared.notes[-1]
    assert capsys.readouterr().err.count("skipped: ") == 3


def test_adapt_a_model_to_a_folder_of_recordings_and_resume(tmp_path, base_model, capsys):
    from speechllm.speechlm import load_speechlm
    from speechllm.train import evaluate

    data = recordings(tmp_path / "my_recordings")
    out = tmp_path / "adapted"
    args = ["finetune", "--train", str(data), "--base", str(base_model), "--out", str(out),
            "--lora-rank", "2", "--batch-size", "2", "--lr", "3e-3", "--warmup", "1", "--eval-every", "100",
            "--max-new-tokens", "8", "--quiet"]
    assert main(args + ["--steps", "2"]) == 0
    printed = capsys.readouterr()
    assert "WER on 1 held-out utterances:" in printed.out and "(base) ->" in printed.out
    assert "held out 1 of 8 utterances" in printed.err
    train_rows = read_manifest(out / "data" / "train.jsonl")
    eval_rows = read_manifest(out / "data" / "eval.jsonl")
    assert len(train_rows) == 7 and len(eval_rows) == 1
    assert {r.text for r in train_rows + eval_rows} == set(TEXTS)
    report = json.loads((out / "adaptation.json").read_text())
    assert report["eval_rows"] == 1 and report["steps"] == 2
    # the numbers are those of the models themselves on the held-out rows
    base = load_speechlm(base_model)
    assert report["before"]["wer"] == pytest.approx(evaluate(base, eval_rows, max_new_tokens=8)["wer"])
    adapted = load_speechlm(out)
    assert adapted.has_lora and not base.has_lora
    assert report["after"]["wer"] == pytest.approx(evaluate(adapted, eval_rows, max_new_tokens=8)["wer"])
    # resume: the same data and "before", training goes on from step 2
    assert main(args + ["--steps", "3", "--resume"]) == 0
    printed = capsys.readouterr()
    assert "reusing the data prepared" in printed.err and "steps 2..3" in printed.err
    again = json.loads((out / "adaptation.json").read_text())
    assert again["before"] == report["before"] and again["steps"] == 3
    # the architecture comes from the base
    assert main(args + ["--steps", "3", "--adapter", "conv"]) == 1
    assert "the architecture comes from --base" in capsys.readouterr().err


def test_encoder_cache_is_keyed_by_the_base_encoder_also_on_resume(tmp_path, base_model, capsys):
    from speechllm.encoder_cache import EncoderCache
    from speechllm.speechlm import read_config

    data = recordings(tmp_path / "my_recordings")
    cache = tmp_path / "cache"
    args = ["finetune", "--train", str(data), "--base", str(base_model), "--out", str(tmp_path / "run"),
            "--encoder-cache", str(cache), "--batch-size", "2", "--eval-every", "100",
            "--max-new-tokens", "4", "--save-every", "1", "--quiet"]
    assert main(args + ["--steps", "1"]) == 0
    assert main(args + ["--steps", "3", "--resume"]) == 0
    capsys.readouterr()
    keyed = EncoderCache(cache, read_config(base_model)[0].encoder)
    expected = {keyed.path_for(str(f)) for f in data.glob("*.wav")}
    written = set(cache.rglob("*.safetensors"))
    assert len(written) >= 4 and written <= expected


def test_a_base_with_a_frozen_encoder_can_fine_tune_its_top_layer(tmp_path, base_model, capsys):
    from speechllm.speechlm import load_speechlm

    data = recordings(tmp_path / "my_recordings")
    args = ["finetune", "--train", str(data), "--base", str(base_model), "--batch-size", "2", "--steps", "1",
            "--eval-every", "100", "--max-new-tokens", "4", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "enc"), "--train-encoder-layers", "1"]) == 0
    capsys.readouterr()
    assert load_speechlm(tmp_path / "enc").config.encoder_trainable_layers == 1
    assert not load_speechlm(base_model).encoder.trainable_layers
    assert main(args + ["--out", str(tmp_path / "deep"), "--train-encoder-layers", "2"]) == 1
    assert "between 1 and 1" in capsys.readouterr().err


def whisper_hearing_base(folder):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, save_speechlm

    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(folder / "whisper")), adapter="ctc-posterior",
                             llm=str(make_tiny_llm(folder / "llm")), hearing="whisper",
                             adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4})
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), folder / "base")


def test_a_base_hearing_through_whisper_has_that_decoder_tuned_and_resumes(tmp_path, capsys):
    """The default for a Whisper-hearing base: its Whisper's decoder learns the transcripts, the model
    folder keeps the tuned part and hears with it; --resume after the end trains nothing more."""
    from speechllm.files import load_tensors
    from speechllm.speechlm import load_speechlm
    from speechllm.whisper.finetune import decoder_weights

    base = whisper_hearing_base(tmp_path)
    data = recordings(tmp_path / "my_recordings")
    args = ["finetune", "--train", str(data), "--base", str(base), "--batch-size", "2", "--steps", "3",
            "--lr", "1e-3", "--max-new-tokens", "4", "--out", str(tmp_path / "tuned"), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "fine-tuning it on the transcripts" in out.err and "WER on 1 held-out" in out.out
    report = json.loads((tmp_path / "tuned" / "adaptation.json").read_text())
    assert report["trains"] == "whisper decoder" and report["steps"] == 3
    assert {"before", "after"} <= set(report) and report["evals"][-1]["step"] == 3
    tuned = load_speechlm(tmp_path / "tuned")
    assert tuned.config.hearing == "whisper" and tuned.config.hearing_decoder == "hearing_decoder.safetensors"
    saved = load_tensors(tmp_path / "tuned" / "hearing_decoder.safetensors")
    heard = decoder_weights(tuned.whisper.asr.model)
    assert all(torch.equal(saved[k], heard[k]) for k in saved)
    original = decoder_weights(load_speechlm(base).whisper.asr.model)
    assert any(not torch.equal(saved[k], original[k]) for k in saved)
    assert main(args + ["--resume"]) == 0  # finished: the checkpoint is the end, nothing trains again
    assert "resuming Whisper's decoder" in capsys.readouterr().err
    assert all(torch.equal(saved[k], v) for k, v in
               load_tensors(tmp_path / "tuned" / "hearing_decoder.safetensors").items())


def test_a_base_hearing_through_whisper_can_train_its_adapter_instead(tmp_path, capsys):
    from speechllm.speechlm import load_speechlm

    base = whisper_hearing_base(tmp_path)
    data = recordings(tmp_path / "my_recordings")
    args = ["finetune", "--train", str(data), "--base", str(base), "--batch-size", "2", "--steps", "1",
            "--eval-every", "100", "--max-new-tokens", "4", "--lm-weight", "0", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "tuned"), "--train-adapter"]) == 0
    assert "model is evaluated and saved hearing through the adapter" in capsys.readouterr().err
    assert load_speechlm(tmp_path / "tuned").config.hearing == "adapter"
    assert main(args + ["--out", str(tmp_path / "lora"), "--lora-rank", "2", "--freeze-adapter",
                        "--lm-weight", "1"]) == 0
    assert load_speechlm(tmp_path / "lora").config.hearing == "whisper"


def test_training_on_spoken_questions_lets_the_lora_answer_them(tmp_path, capsys):
    """A base that types spoken questions to its LLM without the LoRA answers them with its LoRA once it
    is fine-tuned on spoken questions; fine-tuned on transcripts alone it keeps typing them."""
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.manifest import write_manifest
    from speechllm.speechlm import LoraSpec, SpeechLLM, SpeechLLMConfig, load_speechlm, save_speechlm

    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "whisper")), adapter="ctc-posterior",
                             llm=str(make_tiny_llm(tmp_path / "llm")), hearing="whisper",
                             asr_decoder="ctc", spoken_questions="text", lora=LoraSpec(rank=2, alpha=4.0),
                             adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4})
    torch.manual_seed(0)
    base = save_speechlm(SpeechLLM.build(config), tmp_path / "base")
    data = recordings(tmp_path / "my_recordings")
    questions = [ManifestRow(audio=str(data / f"utt{i:02d}.wav"), text=text, task="sqa", answer="yes")
                 for i, text in enumerate(TEXTS)]
    write_manifest(tmp_path / "questions.jsonl", questions)
    args = ["--base", str(base), "--batch-size", "2", "--steps", "1", "--eval-every", "100",
            "--max-new-tokens", "4", "--freeze-adapter", "--quiet"]
    assert main(["finetune", "--train", str(tmp_path / "questions.jsonl"), "--out", str(tmp_path / "qa"),
                 *args]) == 0
    assert "the training data has spoken questions" in capsys.readouterr().err
    assert load_speechlm(tmp_path / "qa").config.spoken_questions == "lora"
    assert main(["finetune", "--train", str(data), "--out", str(tmp_path / "asr"), *args]) == 0
    assert "spoken questions" not in capsys.readouterr().err
    assert load_speechlm(tmp_path / "asr").config.spoken_questions == "text"
    text_rows = tmp_path / "text.jsonl"  # text-side training alone (no audio manifest): the same rule
    text_rows.write_text("".join(json.dumps({"task": "sqa", "text": text, "answer": "yes"}) + "\n"
                                 for text in TEXTS))
    assert main(["finetune", "--text-train", str(text_rows), "--out", str(tmp_path / "text"), *args]) == 0
    assert "the training data has spoken questions" in capsys.readouterr().err
    assert load_speechlm(tmp_path / "text").config.spoken_questions == "lora"


def test_a_whisper_base_becomes_a_tuned_whisper_folder_that_transcribe_takes(tmp_path, capsys):
    """--base a Whisper model: its decoder is fine-tuned and OUT/ is a Whisper folder (the tuned part
    over the base, which is not copied) that every --model option loads."""
    from tiny_models import make_tiny_whisper

    from speechllm.whisper import load_whisper
    from speechllm.whisper.finetune import decoder_weights

    base = make_tiny_whisper(tmp_path / "whisper")
    data = recordings(tmp_path / "my_recordings")
    out = tmp_path / "my_whisper"
    args = ["finetune", "--train", str(data), "--base", str(base), "--batch-size", "2", "--steps", "2",
            "--lr", "1e-3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "is a Whisper model: fine-tuning its decoder" in captured.err
    assert "WER on 1 held-out" in captured.out
    report = json.loads((out / "adaptation.json").read_text())
    assert report["trains"] == "whisper decoder" and {"before", "after"} <= set(report)
    assert {"wer", "cer", "wer_fallback", "cer_fallback"} <= set(report["after"])
    assert "with temperature fallback" in captured.out
    assert not (out / "model.safetensors").exists()
    tuned, _ = load_whisper(out)
    original, _ = load_whisper(base)
    assert any(not torch.equal(v, decoder_weights(original)[k]) for k, v in decoder_weights(tuned).items())
    assert torch.equal(tuned.encoder.conv1.weight, original.encoder.conv1.weight)
    assert main(["transcribe", str(data / "utt00.wav"), "--model", str(out), "--output",
                 str(tmp_path / "t.jsonl"), "--quiet"]) == 0
    assert json.loads((tmp_path / "t.jsonl").read_text())["audio"].endswith("utt00.wav")
    from speechllm.transcriber import WhisperTranscriber
    from speechllm.whisper.transcribe import TEMPERATURE_FALLBACK

    assert WhisperTranscriber(str(out)).options.temperatures == TEMPERATURE_FALLBACK  # transcribe's default
    assert WhisperTranscriber(str(out), temperature=0).options.temperatures == (0.0,)  # asked for
    assert WhisperTranscriber(str(base)).options.temperatures == TEMPERATURE_FALLBACK  # any Whisper's
    assert main([*args, "--lora-rank", "2"]) == 1
    assert "--lora-rank: --base" in capsys.readouterr().err
    assert main([*args, "--language", "es"]) == 1  # said before the base is evaluated
    err = capsys.readouterr().err
    assert "--language es: this model is English-only" in err and "evaluating" not in err
