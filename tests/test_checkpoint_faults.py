"""Checkpoints survive crashes: a damaged newest checkpoint is skipped for the newest intact one,
files are made durable before they are renamed into place, a truncated model file is a ValueError
naming it, and a tiny ``finetune`` killed (SIGKILL) 20 times at random points, many of them inside
a checkpoint write, always resumes from the newest intact checkpoint and ends where an
uninterrupted run ends."""

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import config, data  # noqa: F401  (data: the tiny Whisper, LLM and clips of test_train)

from speechllm.speechlm import load_speechlm
from speechllm.train import latest_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")

NEEDED = ("config.json", "adapter.safetensors", "lora/adapter_model.safetensors", "lora/adapter_config.json",
          "optimizer.safetensors", "trainer_state.json")


def cut_in_half(path: Path) -> None:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def intact(folder: Path) -> bool:
    """The test's own judgement, independent of the trainer's: every file there, every tensor loads."""
    try:
        for name in NEEDED:
            path = folder / name
            if name.endswith(".json"):
                json.loads(path.read_text())
            else:
                load_file(path)
    except Exception:
        return False
    return True


def newest_intact_step(out: Path) -> int:
    steps = sorted((int(p.name[5:]) for p in (out / "checkpoints").glob("step-*")), reverse=True)
    return next((s for s in steps if intact(out / "checkpoints" / f"step-{s:07d}")), 0)


@pytest.fixture(scope="module")
def two_checkpoints(data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(config(data, out, steps=3, save_every=1))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000002", "step-0000003"]
    return out


DAMAGES = {
    "adapter cut": lambda f: cut_in_half(f / "adapter.safetensors"),
    "lora cut": lambda f: cut_in_half(f / "lora" / "adapter_model.safetensors"),
    "optimizer cut": lambda f: cut_in_half(f / "optimizer.safetensors"),
    "optimizer empty": lambda f: (f / "optimizer.safetensors").write_bytes(b""),
    "state garbled": lambda f: (f / "trainer_state.json").write_text('{"step": 3, "param_gr'),
    "config missing": lambda f: (f / "config.json").unlink(),
    "state missing": lambda f: (f / "trainer_state.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(two_checkpoints, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    DAMAGES[damage](out / "checkpoints" / "step-0000003")
    assert latest_checkpoint(out) == out / "checkpoints" / "step-0000002"
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "step-0000003" in warning[0], warning
    shutil.rmtree(out / "checkpoints" / "step-0000002")
    assert latest_checkpoint(out) is None  # nothing intact: training starts over


def test_resume_falls_back_to_the_newest_intact_checkpoint(data, two_checkpoints, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    cut_in_half(out / "checkpoints" / "step-0000003" / "adapter.safetensors")
    resumed = train(config(data, out, steps=4, save_every=1, resume=True))
    assert resumed.start_step == 2 and len(resumed.losses) == 2
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000003", "step-0000004"]
    assert all(intact(p) for p in (out / "checkpoints").iterdir())  # the damaged step 3 was rewritten


def test_a_truncated_model_file_is_a_value_error_naming_it(two_checkpoints, tmp_path):
    import speechllm

    folder = tmp_path / "model"
    shutil.copytree(two_checkpoints, folder, ignore=shutil.ignore_patterns("checkpoints"))
    cut_in_half(folder / "adapter.safetensors")
    expected = re.escape(f"{folder / 'adapter.safetensors'}: corrupt or truncated safetensors file (")
    with pytest.raises(ValueError, match=expected):
        load_speechlm(folder)
    with pytest.raises(ValueError, match=expected):
        speechllm.load(str(folder))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced files")
def test_checkpoint_files_are_fsynced_before_the_rename_and_the_folder_after(data, tmp_path,  # noqa: F811
                                                                              monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = (tmp_path / "run").resolve()
    train(config(data, out, steps=1))
    root, final = out / "checkpoints", out / "checkpoints" / "step-0000001"
    tmp = root / ".step-0000001.tmp"
    done = next(i for i, e in enumerate(events) if e == ("rename", str(tmp), str(final)))
    synced_before = {e[1] for e in events[:done] if e[0] == "fsync"}
    for path in final.rglob("*"):  # every file and folder of the checkpoint, under its temporary name
        assert str(tmp / path.relative_to(final)) in synced_before, path
    assert str(tmp) in synced_before
    assert ("fsync", str(root)) in events[done:]  # the rename itself made durable


# ---------------------------------------------------------------- fault injection

KILLS = 20
STEPS = 24


def _finetune_child(argv: list[str], log: str) -> None:
    """In a forked child of this (already imported) process: ``speechllm finetune`` with its
    output in ``log`` and each safetensors write slowed, so that kills often land mid-checkpoint."""
    stream = open(log, "w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    import safetensors.torch

    from speechllm.apps.cli import main

    write = safetensors.torch.save_file  # what speechllm.files.atomic_save_tensors calls

    def slow_write(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(0.03)  # written, not yet renamed into place

    safetensors.torch.save_file = slow_write
    try:
        code = main(argv)
    except BaseException as exc:  # noqa: BLE001  (a traceback is the failure this test looks for)
        import traceback

        traceback.print_exc()
        code = 1 if not isinstance(exc, SystemExit) else exc.code
    stream.flush()
    os._exit(code or 0)


def test_finetune_killed_20_times_resumes_from_the_newest_intact_checkpoint(data, tmp_path):  # noqa: F811
    root, manifest, whisper, llm = data
    reference = train(config(data, tmp_path / "reference", steps=STEPS, save_every=STEPS))
    out = tmp_path / "killed"
    argv = ["finetune", "--train", str(manifest), "--eval-fraction", "0", "--adapter", "alignformer",
            "--adapter-options", '{"d_model": 16, "d_ffn": 32}', "--lora-rank", "2",
            "--encoder", str(whisper), "--llm", str(llm), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "3", "--lr", "3e-3", "--warmup", "1", "--eval-every", "1000", "--save-every", "1",
            "--quiet", "--resume"]
    fork = multiprocessing.get_context("fork")
    rng = random.Random(24)
    kills = mid_write = damaged = rounds = 0
    window = 3.0  # seconds; learnt from the first uninterrupted runs below
    started = time.perf_counter()
    while kills < KILLS:
        rounds += 1
        assert rounds < 4 * KILLS, "the runs keep finishing before they can be killed"
        expected = newest_intact_step(out)
        log = tmp_path / f"round{rounds}.log"
        child = fork.Process(target=_finetune_child, args=(argv, str(log)))
        begun = time.perf_counter()
        child.start()
        child.join(rng.uniform(0.1, window))
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            kills += 1
            leftovers = list((out / "checkpoints").glob(".step-*")) if (out / "checkpoints").exists() else []
            mid_write += any(p.is_dir() for p in leftovers)
            if rng.random() < 0.3 and any((out / "checkpoints").glob("step-*")):
                # what a power cut can leave of un-synced data: the newest checkpoint's file cut short
                newest = max((out / "checkpoints").glob("step-*"))
                target = rng.choice(["adapter.safetensors", "optimizer.safetensors",
                                     "lora/adapter_model.safetensors"])
                cut_in_half(newest / target)
                damaged += 1
        else:
            window = max(window, 0.7 * (time.perf_counter() - begun))
        text = log.read_text()
        assert child.exitcode in (0, -signal.SIGKILL), f"round {rounds} failed:\n{text[-3000:]}"
        begun_at = re.search(r"steps (\d+)\.\.(\d+)", text)
        if begun_at:  # the run got far enough to say where it began
            assert int(begun_at.group(1)) == expected, f"round {rounds}:\n{text[-3000:]}"
        if child.exitcode == 0 and begun_at and int(begun_at.group(1)) >= STEPS:
            shutil.rmtree(out)  # finished before a kill: train again from scratch
    log = tmp_path / "final.log"
    expected = newest_intact_step(out)
    child = fork.Process(target=_finetune_child, args=(argv, str(log)))
    child.start()
    child.join()
    text = log.read_text()
    assert child.exitcode == 0, text[-3000:]
    assert int(re.search(r"steps (\d+)\.\.", text).group(1)) == expected
    elapsed = time.perf_counter() - started
    print(f"{kills} kills ({mid_write} mid-checkpoint, {damaged} checkpoints damaged) in {rounds} rounds, "
          f"{elapsed:.1f} s")
    assert mid_write >= 3, (mid_write, kills)
    assert latest_checkpoint(out).name == f"step-{STEPS:07d}"
    assert json.loads((out / "config.json").read_text())["info"]["step"] == STEPS
    a = load_speechlm(out).trainable_state_dict()
    b = load_speechlm(reference.out).trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
