"""``speechllm transcribe`` on a folder with a long file, ten short files and two corrupt ones: the
failures are reported, the rest transcribed with timestamps, and ``--resume`` after a real kill -9
redoes only what was not finished. A small version of the issue's check, on a tiny random Whisper."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch

from speechllm.apps.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from tiny_models import make_tiny_whisper

    root = tmp_path_factory.mktemp("resume")
    folder = root / "recordings"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    soundfile.write(folder / "long.flac", (0.1 * rng.standard_normal(16000 * 40)).astype(np.float32), 16000)
    for i in range(10):
        soundfile.write(folder / ("more" if i % 2 else ".") / f"short{i}.wav",
                        (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF not really a wave file" * 40)
    (folder / "more" / "empty.flac").write_bytes(b"")
    return folder, make_tiny_whisper(root / "whisper")


def rows_of(path):
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by the kill
    return rows


def test_kill_9_then_resume_redoes_only_unfinished_work(job, tmp_path, capsys):
    folder, whisper = job
    out = tmp_path / "out.jsonl"
    command = ["transcribe", str(folder), "--output", str(out), "--model", str(whisper),
               "--segmenter", "fixed", "--batch-size", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "speechllm.apps.cli", *command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(rows_of(out)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = rows_of(out)
    finished = {r["audio"] for r in before if not r.get("error")}
    assert 3 <= len(before) < 13 and finished

    assert main([*command[:-1], "--resume"]) == 1  # two inputs cannot be read
    captured = capsys.readouterr()
    redone = {line.split("\t")[0] for line in captured.out.splitlines()}
    inputs = {str(p) for p in folder.rglob("*") if p.is_file()}
    corrupt = {str(folder / "corrupt.wav"), str(folder / "more" / "empty.flac")}
    assert redone == inputs - corrupt - finished  # nothing finished is transcribed twice
    assert captured.err.count("failed: ") == 2 and f"{len(redone)} transcribed, 2 failed" in captured.err

    rows = rows_of(out)
    assert sorted(r["audio"] for r in rows) == sorted(inputs)  # one row per input, none twice
    by_audio = {r["audio"]: r for r in rows}
    assert all(by_audio[f]["text"] == "" and by_audio[f]["error"].startswith(f) for f in corrupt)
    long = by_audio[str(folder / "long.flac")]
    assert long["duration"] == 40.0 and len(long["segments"]) >= 2  # over one 30 s window: cut, not cropped
    assert long["segments"][0]["start"] == 0.0 and long["segments"][-1]["end"] == 40.0
    assert all(0 < s["end"] - s["start"] <= 30.0 for s in long["segments"])
    for audio in inputs - corrupt:
        row = by_audio[audio]
        assert row["text"] and row["segments"][-1]["end"] == row["duration"]


def test_quant_swaps_the_linears_and_still_transcribes(job, tmp_path, capsys):
    from speechllm.quant import QuantLinear
    from speechllm.transcriber import WhisperTranscriber

    folder, whisper = job
    for quant in ("int8", "int4"):
        model = WhisperTranscriber(str(whisper), segmenter="fixed", quant=quant)
        layers = [m for m in model.model.modules() if isinstance(m, QuantLinear)]
        assert layers and not any(type(m) is torch.nn.Linear for m in model.model.modules())
        assert {m.qweight.spec.bits for m in layers} == {int(quant[-1])}
        assert model.transcribe(str(folder / "short0.wav")).text
    out = tmp_path / "q.jsonl"
    assert main(["transcribe", str(folder / "short0.wav"), "--model", str(whisper), "--quant", "int8",
                 "--segmenter", "fixed", "--output", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["text"]
    with pytest.raises(SystemExit):
        main(["transcribe", "x.wav", "--quant", "int3"])
    assert "invalid choice" in capsys.readouterr().err
