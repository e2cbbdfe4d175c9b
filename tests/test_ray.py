"""``speechllm transcribe --ray`` against a local Ray instance on this machine."""

import json
import shutil
from pathlib import Path

import pytest

from speechllm.zoo import ZOO

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_tiny = pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None,
                                reason="whisper-tiny.en bundle not installed")


def test_gpus_per_actor():
    from speechllm.apps.ray_backend import gpus_per_actor

    assert gpus_per_actor(None, 2, 0.0) == 0.0  # a CPU cluster: no GPU asked for
    assert gpus_per_actor(None, 2, 8.0) == 1.0 and gpus_per_actor(None, 4, 1.0) == 0.25
    assert gpus_per_actor(0.5, 4, 2.0) == 0.5
    with pytest.raises(ValueError, match=r"--ray-gpus 1 x --ray-workers 2 needs 2 GPUs; the Ray cluster has"):
        gpus_per_actor(1, 2, 1.0)
    with pytest.raises(ValueError, match="must be 0 or more"):
        gpus_per_actor(-1, 1, 1.0)


def test_uris_need_ray(tmp_path):
    from speechllm.apps.batch import BadInput, expand_inputs

    [item] = expand_inputs(["s3://bucket/calls/"])
    assert isinstance(item, BadInput) and item.reason == ("s3://bucket/calls/: URIs (s3://, gs://, ...) are "
                                                          "read through Ray Data: run with --ray")


@needs_tiny
def test_transcribe_on_local_ray_matches_local_run(tmp_path):
    """One Ray run reads a local path and a folder given as a URI (Ray Data's file reader, as for
    s3:// or gs://), with a broken file inside: the same rows as the local run, in order."""
    ray = pytest.importorskip("ray")
    from speechllm.apps.cli import main

    folder = tmp_path / "bucket"
    folder.mkdir()
    first, last = sorted(EXAMPLES.glob("*.flac"))[:2]
    shutil.copy(first, tmp_path / "a_clip.flac")
    (folder / "b_broken.flac").write_bytes(b"no audio here" * 40)
    shutil.copy(last, folder / "c_clip.flac")
    local_inputs = [str(tmp_path / "a_clip.flac"), str(folder / "b_broken.flac"), str(folder / "c_clip.flac")]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["transcribe", *local_inputs, "--output", str(local), "--quiet"]) == 1
    # a GPU Ray believes in: two actors asking for half of it each are scheduled side by side (they
    # run on the CPU: torch sees no CUDA here); 3 logical CPUs leave one for Ray Data's read tasks
    ray.init(num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["transcribe", local_inputs[0], f"file://{folder}", "--output", str(remote), "--quiet",
                     "--ray", "--ray-workers", "2", "--ray-gpus", "0.5"]) == 1
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in remote.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [local_inputs[0], f"file://{folder}/b_broken.flac",
                                          f"file://{folder}/c_clip.flac"]
    assert [r["text"] for r in rows] == [json.loads(line)["text"] for line in local.read_text().splitlines()]
    assert rows[1]["error"].startswith(f"file://{folder}/b_broken.flac: unreadable audio")
    assert rows[2]["segments"][0]["text"] and rows[2]["duration"] > 1
