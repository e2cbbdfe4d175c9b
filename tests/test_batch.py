import json

import numpy as np
import soundfile as sf

from speechllm.apps.batch import expand_inputs, run_batch
from speechllm.audio import AudioError, audio_info


class FakeTranscriber:
    """Stands in for the model: 'transcribes' a file as its duration, fails on bad audio."""

    def __init__(self):
        self.seen = []

    def transcribe_many(self, sources):
        from speechllm.transcriber import Segment, Transcript

        for source in sources:
            self.seen.append(source)
            try:
                d = audio_info(source).duration
                if d == 0:
                    raise AudioError(source, "no audio samples (0 s)")
            except AudioError as exc:
                yield source, exc
                continue
            yield source, Transcript(f"{d:.1f} seconds", (Segment(0.0, d, f"{d:.1f} seconds"),), d)


def make_inputs(tmp_path):
    good = []
    for i, seconds in enumerate([1.0, 2.0, 3.0]):
        path = tmp_path / "in" / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, np.zeros(int(16_000 * seconds), dtype=np.float32), 16_000)
        good.append(str(path))
    bad = tmp_path / "in" / "broken.wav"
    bad.write_bytes(b"not audio at all" * 20)
    return good, str(bad)


def test_failures_are_recorded_and_batch_goes_on(tmp_path):
    good, bad = make_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    summary = run_batch(FakeTranscriber(), [good[0], bad, good[1]], out, progress=False, echo=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [good[0], bad, good[1]]
    assert rows[0]["text"] == "1.0 seconds" and rows[0]["segments"][0]["end"] == 1.0
    assert rows[1]["text"] == "" and "unreadable audio" in rows[1]["error"] and bad in rows[1]["error"]
    assert (summary.done, summary.failed, summary.skipped) == (2, 1, 0)


def test_resume_redoes_only_unfinished_work(tmp_path):
    good, bad = make_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    first = {"audio": good[0], "text": "kept from before"}
    # a finished row, a failed row and a line cut short by kill -9
    out.write_text(json.dumps(first) + "\n" + json.dumps({"audio": bad, "text": "", "error": "x"}) + "\n"
                   + '{"audio": "' + good[1] + '", "te')
    fake = FakeTranscriber()
    summary = run_batch(fake, good + [bad], out, resume=True, progress=False, echo=False)
    assert fake.seen == [good[1], good[2], bad]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == first
    assert sorted(r["audio"] for r in rows) == sorted(good + [bad])
    assert summary.skipped == 1 and summary.failed == 1


def test_expand_folders_and_globs(tmp_path):
    good, bad = make_inputs(tmp_path)
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    assert expand_inputs([str(tmp_path / "in")]) == sorted(good + [bad])
    assert expand_inputs([str(tmp_path / "in" / "clip*.wav")]) == good
    assert expand_inputs(["as-given.wav"]) == ["as-given.wav"]


def test_manifest_inputs(tmp_path):
    import pytest

    from speechllm.manifest import ManifestError

    good, bad = make_inputs(tmp_path)
    manifest = tmp_path / "in" / "list.jsonl"
    manifest.write_text(json.dumps({"audio": "clip1.wav", "text": "x"}) + "\n"
                        + json.dumps({"audio": good[0], "text": "y"}) + "\n")
    assert expand_inputs([str(manifest), good[2]]) == [good[1], good[0], good[2]]
    manifest.write_text(json.dumps({"audio": "clip1.wav", "text": "x"}) + "\n{not json\n")
    with pytest.raises(ManifestError, match=f"{manifest}:2: bad JSON"):
        expand_inputs([str(manifest)])


def test_shard_splits_deterministically():
    import pytest

    from speechllm.apps.batch import shard

    items = [f"f{i}.wav" for i in range(10)]
    parts = [shard(items, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(items) and parts[1] == ["f1.wav", "f4.wav", "f7.wav"]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            shard(items, bad)


def test_subtitle_formats_written_beside_output(tmp_path):
    good, _ = make_inputs(tmp_path)
    out = tmp_path / "res" / "out.jsonl"
    run_batch(FakeTranscriber(), good[2:], out, progress=False, echo=False, formats=("srt", "vtt", "txt"))
    srt = (out.parent / "clip2.srt").read_text()
    assert srt == "1\n00:00:00,000 --> 00:00:03,000\n3.0 seconds\n"
    assert (out.parent / "clip2.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:03.000\n")
    assert (out.parent / "clip2.txt").read_text() == "3.0 seconds\n"
