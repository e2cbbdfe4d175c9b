import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from tiny_models import make_tiny_llm, make_tiny_whisper

from speechllm.apps.cli import main
from speechllm.manifest import ManifestError
from speechllm.speechlm import LoraSpec, SpeechLLM, SpeechLLMConfig, load_speechlm
from speechllm.train import (
    BatchOrder,
    TrainConfig,
    answer_correct,
    follows_instruction,
    latest_checkpoint,
    train,
)

ROWS = [
    {"audio": "tone.wav", "text": "hello world", "task": "asr"},
    {"audio": "noise.wav", "text": "paris", "task": "sqa", "prompt": "where?", "answer": "paris"},
    {"audio": "chirp.wav", "text": "the weather", "task": "st", "source_text": "el tiempo"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    t = np.arange(12000) / 16000
    rng = np.random.default_rng(0)
    soundfile.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    soundfile.write(root / "noise.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 800 * t) * t)
    soundfile.write(root / "chirp.wav", chirp.astype(np.float32), 16000)
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    whisper, llm = make_tiny_whisper(root / "whisper"), make_tiny_llm(root / "llm")
    return root, manifest, whisper, llm


def config(data, out, **changes) -> TrainConfig:
    """A tiny run; ``changes`` may name TrainConfig's fields and its model's (SpeechLLMConfig's)."""
    root, manifest, whisper, llm = data
    model = {"encoder": str(whisper), "llm": str(llm), "adapter": "alignformer",
             "adapter_options": {"d_model": 16, "d_ffn": 32}, "lora": LoraSpec(rank=2, alpha=4.0)}
    model.update({k: changes.pop(k) for k in list(changes) if k in SpeechLLMConfig.__dataclass_fields__})
    base = TrainConfig(train=str(manifest), out=str(out), model=SpeechLLMConfig(**model), steps=4,
                       batch_size=3, lr=3e-3, warmup=1, eval_every=100, log_every=1, progress=False)
    return replace(base, **changes)


def test_loss_decreases_and_eval_reports_metrics(data, tmp_path):
    run = config(data, tmp_path / "run", steps=12, eval=str(data[1]), eval_every=12, max_new_tokens=4)
    result = train(run)
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    assert last < 0.8 * first, result.losses
    metrics = result.evals[-1]
    for key in ("wer", "cer", "bleu", "ifr", "ifr/transcribe", "ifr/translate", "qa_acc/passage-question"):
        assert key in metrics and 0 <= metrics[key] <= 100
    assert metrics["step"] == 12 and metrics["rows"] == 3
    model = load_speechlm(tmp_path / "run")  # the output folder is a model
    assert model.config.adapter == "alignformer" and model.has_lora
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == list(range(1, 13)) and "eval" in log[-1]


def test_resume_continues_from_the_same_step(data, tmp_path):
    whole = train(config(data, tmp_path / "whole", steps=4, save_every=2))
    assert [p.name for p in sorted((tmp_path / "whole" / "checkpoints").iterdir())] == [
        "step-0000002", "step-0000004"]
    first = train(config(data, tmp_path / "split", steps=2, save_every=2))
    assert latest_checkpoint(tmp_path / "split").name == "step-0000002"
    resumed = train(config(data, tmp_path / "split", steps=4, save_every=2, resume=True))
    assert resumed.start_step == 2 and len(resumed.losses) == 2
    np.testing.assert_allclose(first.losses + resumed.losses, whole.losses, rtol=1e-5)
    a = load_speechlm(tmp_path / "whole").trainable_state_dict()
    b = load_speechlm(tmp_path / "split").trainable_state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_frozen_adapter_trains_only_lora(data, tmp_path):
    train(config(data, tmp_path / "base", steps=2))
    model = load_speechlm(tmp_path / "base")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(config(data, tmp_path / "lora", steps=3, freeze_adapter=True), model=model)
    after = load_speechlm(tmp_path / "lora").trainable_state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("lora.") for k in changed), sorted(changed)[:3]
    with pytest.raises(ValueError, match="only LoRA"):
        train(config(data, tmp_path / "none", lora=None, freeze_adapter=True))
    with pytest.raises(ValueError, match="--base"):
        train(config(data, tmp_path / "scratch", freeze_adapter=True))


def test_bad_rows_reported_before_training(data, tmp_path):
    root = data[0]
    soundfile.write(root / "long.wav", np.zeros(31 * 16000, dtype=np.float32), 16000)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"audio": str(root / "tone.wav"), "text": "fine"}),
        "{not json",
        json.dumps({"audio": str(root / "missing.wav"), "text": "x"}),
        json.dumps({"audio": str(root / "long.wav"), "text": "too long"}),
        json.dumps({"audio": str(root / "tone.wav"), "task": "st"}),
    ]) + "\n")
    out = tmp_path / "never"
    with pytest.raises(ManifestError) as info:
        train(config(data, out, train=str(bad), eval=str(bad)))
    lines = [e.split(":")[1] for e in info.value.errors]
    assert lines == ["2", "3", "4", "5"] * 2  # both manifests, every bad row, in order
    assert "31.0 s" in info.value.errors[2] and "no such file" in info.value.errors[1]
    assert not out.exists()  # nothing trained, nothing written


def test_finetune_cli(data, tmp_path, capsys):
    root, manifest, whisper, llm = data
    out = tmp_path / "cli"
    code = main(["finetune", "--train", str(manifest), "--eval", str(manifest), "--adapter", "linear",
                 "--adapter-options", '{"hidden_dim": 16}', "--encoder", str(whisper), "--llm", str(llm),
                 "--out", str(out), "--steps", "2", "--batch-size", "2", "--grad-accum", "2",
                 "--eval-every", "2", "--max-new-tokens", "3", "--quiet"])
    assert code == 0 and "final evaluation (step 2)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["adapter"] == "linear"
    assert main(["finetune", "--train", str(manifest), "--out", str(out), "--adapter", "mlp"]) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_finetune_runs_as_ddp_under_torchrun(data, tmp_path):
    """Two processes (gloo on the CPU; nccl on GPUs): rank 0 alone writes, and the ranks stay in step."""
    root, manifest, whisper, llm = data
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "speechllm.apps.cli",
               "finetune", "--train", str(manifest), "--eval", str(manifest), "--adapter", "alignformer",
               "--adapter-options", '{"d_model": 16, "d_ffn": 32}', "--lora-rank", "2",
               "--encoder", str(whisper), "--llm", str(llm), "--out", str(out), "--steps", "3",
               "--batch-size", "2", "--eval-every", "3", "--max-new-tokens", "2", "--quiet",
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "step" in r]
    assert steps[-1] == 3 and len(set(steps)) == len(steps)  # rank 0 alone writes the log
    assert [r["eval"]["step"] for r in log if "eval" in r] == [3]  # and evaluates
    assert json.loads((out / "config.json").read_text())["info"]["step"] == 3
    assert load_speechlm(out).config.adapter == "alignformer"


def test_batch_order_is_resumable_and_sharded():
    order = BatchOrder(7, 3, seed=1)
    epoch = [i for m in range(order.per_epoch) for i in order.batch(m)]
    assert sorted(epoch) == list(range(7))  # each row once per epoch
    assert next(iter(BatchOrder(7, 3, seed=1, start=4))) == order.batch(4)
    shards = [BatchOrder(7, 2, seed=1, rank=r, world=2) for r in range(2)]
    assert shards[0].per_epoch == shards[1].per_epoch == 2  # ranks step together
    seen = [i for s in shards for m in range(2) for i in s.batch(m)]
    assert len(seen) == 8 and set(seen) == set(range(7))  # 7 rows cover 2 ranks x 2 batches x 2


def test_a_new_task_is_one_registry_entry(data, monkeypatch):
    """A task registered once is trained from its manifest rows and scored by its own metric."""
    from types import SimpleNamespace

    from speechllm.manifest import ManifestRow
    from speechllm.speechlm.tasks import TASKS, Example, Task, example_of, row_tasks
    from speechllm.train import evaluate

    def exact(task, refs, hyps):
        return {"exact": sum(map(str.__eq__, refs, hyps)) / len(refs)}

    count = Task("count-words", "How many words are spoken?", rows=("count",), metric=exact,
                 example=lambda task, row: Example(task.name, task.instruction, row.answer, row.text))
    monkeypatch.setitem(TASKS, count.name, count)  # register_task(count), undone after the test
    assert "count" in row_tasks()
    tone = str(data[0] / "tone.wav")
    rows = [ManifestRow(audio=tone, text="hello world", task="count", answer="2"),
            ManifestRow(audio=tone, text="hello", task="count", answer="1")]
    assert example_of(rows[0]) == Example("count-words", "How many words are spoken?", "2", "hello world")
    asked = []

    def generate(audio, instructions, options):
        asked.extend(instructions)
        return [SimpleNamespace(text="2") for _ in audio]

    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None, generate=generate)
    metrics = evaluate(model, rows)
    assert asked == ["How many words are spoken?"] * 2
    assert metrics["exact"] == 0.5 and metrics["ifr/count-words"] == 1.0
    by_length = evaluate(model, rows, group=lambda row: "long" if " " in row.text else None)
    assert by_length["exact"] == 0.5 and by_length["exact/long"] == 1.0 and "exact/None" not in by_length
    with pytest.raises(ValueError, match="not trained here"):
        example_of(ManifestRow(audio=tone, text="x", task="summarize"))


def test_ifr_and_qa_rules():
    assert follows_instruction("transcribe", "hello word", "hello world")
    assert not follows_instruction("transcribe", "Sure! Here is a poem about the sea.", "hello world")
    assert not follows_instruction("translate", "el tiempo", "el tiempo")  # transcribed, not translated
    assert follows_instruction("translate", "the weather", "el tiempo")
    assert not follows_instruction("spoken-question", "", "what is the capital of france")
    assert answer_correct("Paris", "It is Paris.") and not answer_correct("Paris", "Parisian")


def test_augmentation_perturbs_each_draw_and_is_validated(data):
    from speechllm.manifest import read_manifest
    from speechllm.train import SpeechDataset, augment_config

    rows = read_manifest(data[1])
    plain = SpeechDataset(rows)
    noisy = SpeechDataset(rows, augment_config({"noise_prob": 1.0, "speed_prob": 0.0, "reverb_prob": 0.0,
                                                "gain_prob": 0.0, "snr_db_range": [10, 10]}), seed=3)
    clean = plain[0][0]
    first, second = noisy[0][0], noisy[0][0]
    assert first.shape == clean.shape and not np.allclose(first, clean) and not np.allclose(first, second)
    assert plain[0][1] == noisy[0][1]  # the example (instruction, reply) is untouched
    assert augment_config(None) is None
    with pytest.raises(ValueError, match="no option"):
        augment_config({"noize": 1})


def test_encoder_cache_gives_the_same_training(data, tmp_path):
    from speechllm.encoder_cache import EncoderCache

    plain = train(config(data, tmp_path / "plain", steps=3))
    cached = train(config(data, tmp_path / "cached", steps=3, encoder_cache=str(tmp_path / "cache")))
    assert cached.losses == pytest.approx(plain.losses, rel=2e-3)  # fp16 frames
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == len(ROWS)
    cache = EncoderCache(tmp_path / "cache", data[2].as_posix())
    assert cache.path_for(str(data[0] / "tone.wav")) in files
    other = EncoderCache(tmp_path / "cache", "another-encoder")
    assert other.path_for(str(data[0] / "tone.wav")) not in files
    with pytest.raises(ValueError, match="exclude each other"):
        train(config(data, tmp_path / "both", encoder_cache=str(tmp_path / "cache"), augment={}))


def test_encoder_cache_recomputes_another_encoders_features(data, tmp_path):
    """An entry of the wrong width (another encoder's frames under this key) is never read back."""
    from safetensors.torch import load_file, save_file

    from speechllm.encoder_cache import EncoderCache
    from speechllm.speechlm.backbone import load_encoder

    root, _, whisper, _ = data
    encoder = load_encoder(str(whisper), "whisper")
    cache = EncoderCache(tmp_path / "cache", whisper.as_posix())
    path = str(root / "tone.wav")
    file = cache.path_for(path)
    file.parent.mkdir(parents=True)
    save_file({"hidden": torch.zeros(3, encoder.dim + 1, dtype=torch.float16)}, file)
    audio = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]
    hidden, mask = cache.frames(encoder, [path], audio, torch.tensor([audio.shape[1]]), torch.device("cpu"))
    assert hidden.shape[-1] == encoder.dim and cache.misses == 1
    assert load_file(file)["hidden"].shape[-1] == encoder.dim  # the entry is rewritten


def test_encoder_cache_filled_ahead_is_what_training_reads(data, tmp_path, capsys):
    from safetensors.torch import load_file

    from speechllm.encoder_cache import main

    root, manifest, whisper, _ = data
    bad = root / "bad.jsonl"
    (root / "broken.wav").write_bytes(b"RIFF not audio")
    bad.write_text(json.dumps({"audio": "broken.wav", "text": "x", "task": "asr"}) + "\n")
    ahead = tmp_path / "ahead"
    assert main([str(manifest), str(bad), "--cache", str(ahead), "--encoder", whisper.as_posix()]) == 1
    out = capsys.readouterr()
    assert "3 files encoded, 1 failed" in out.out and "broken.wav" in out.err
    filled = {f.relative_to(ahead): load_file(f)["hidden"] for f in ahead.rglob("*.safetensors")}
    train(config(data, tmp_path / "run", steps=1, encoder_cache=str(tmp_path / "cache")))
    written = {f.relative_to(tmp_path / "cache"): load_file(f)["hidden"]
               for f in (tmp_path / "cache").rglob("*.safetensors")}
    assert written.keys() == filled.keys()
    for key, frames in written.items():
        torch.testing.assert_close(frames, filled[key], atol=2e-3, rtol=2e-3)  # batch padding differs
    assert main([str(manifest), "--cache", str(ahead), "--encoder", whisper.as_posix()]) == 0
    assert "0 files encoded" in capsys.readouterr().out


def test_top_encoder_layers_fine_tune_and_travel_with_the_model(data, tmp_path):
    from speechllm.encoder_cache import EncoderCache

    whisper = make_tiny_whisper(tmp_path / "whisper", layers=2).as_posix()
    train(config(data, tmp_path / "enc", encoder=whisper, steps=3, encoder_trainable_layers=1,
                 encoder_cache=str(tmp_path / "cache")))
    model = load_speechlm(tmp_path / "enc")
    assert model.config.encoder_trainable_layers == 1 and (tmp_path / "enc" / "encoder.safetensors").is_file()
    trained = {k for k, p in model.named_parameters() if p.requires_grad and k.startswith("encoder.")}
    assert trained and all(".blocks.1." in k or "ln_post" in k for k in trained), sorted(trained)
    # the trained top differs from the stock encoder; the frozen bottom does not
    stock = SpeechLLM.build(replace(model.config, encoder_trainable_layers=0))
    state, base = model.encoder.state_dict(), stock.encoder.state_dict()
    assert not torch.equal(state["encoder.blocks.1.mlp.0.weight"], base["encoder.blocks.1.mlp.0.weight"])
    assert torch.equal(state["encoder.blocks.0.mlp.0.weight"], base["encoder.blocks.0.mlp.0.weight"])
    # the cache holds the output below the trained block, keyed apart from the whole encoder's
    tone = str(data[0] / "tone.wav")
    assert EncoderCache(tmp_path / "cache", whisper, 1).path_for(tone).is_file()
    assert not EncoderCache(tmp_path / "cache", whisper).path_for(tone).is_file()
    # frames + finish is the whole encoder, and a cache of the wrong split is refused
    audio = torch.from_numpy(soundfile.read(tone, dtype="float32")[0])[None]
    lengths = torch.tensor([audio.shape[1]])
    hidden, _ = model.encode_frames(audio, lengths)
    whole, _ = model.encoder(*model.encoder.features(audio, lengths))
    torch.testing.assert_close(hidden, whole)
    with pytest.raises(ValueError, match="below the top 1"):
        EncoderCache(tmp_path / "cache", "x", 1).frames(stock.encoder, [tone], audio, lengths, stock.device)
    with pytest.raises(ValueError, match="between 1 and 2"):
        train(config(data, tmp_path / "too-many", encoder=whisper, encoder_trainable_layers=3))
