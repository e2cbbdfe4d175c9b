"""``speechllm transcribe --ray`` against a local Ray instance on this machine."""

import json
from pathlib import Path

import pytest

from speechllm.zoo import ZOO

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None,
                                reason="whisper-tiny.en bundle not installed")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_transcribe_on_local_ray_matches_local_run(tmp_path):
    from speechllm.apps.cli import main

    clips = [str(p) for p in sorted(EXAMPLES.glob("*.flac"))[:2]]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"no audio here" * 40)
    inputs = [clips[0], str(broken), clips[1]]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["transcribe", *inputs, "--output", str(local), "--quiet"]) == 1
    try:
        assert main(["transcribe", *inputs, "--output", str(remote), "--quiet", "--ray"]) == 1
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in remote.read_text().splitlines()]
    assert [r["audio"] for r in rows] == inputs
    assert [r["text"] for r in rows] == [json.loads(line)["text"] for line in local.read_text().splitlines()]
    assert "unreadable audio" in rows[1]["error"]
