import json

import numpy as np
import soundfile as sf

from speechllm.apps.batch import expand_inputs, run_batch
from speechllm.audio import AUDIO_SUFFIXES, AudioError, audio_info


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
    good, bad = make_inputs(tmp_path)
    manifest = tmp_path / "in" / "list.jsonl"
    manifest.write_text(json.dumps({"audio": "clip1.wav", "text": "x"}) + "\n"
                        + json.dumps({"audio": good[0], "text": "y"}) + "\n")
    assert expand_inputs([str(manifest), good[2]]) == [good[1], good[0], good[2]]


def test_bad_manifest_rows_and_empty_inputs_become_error_rows_in_place(tmp_path):
    from speechllm.apps.batch import BadInput

    good, bad = make_inputs(tmp_path)
    manifest = tmp_path / "in" / "list.jsonl"
    manifest.write_text(json.dumps({"audio": "clip1.wav", "text": "x"}) + "\n{not json\n"
                        + json.dumps({"audio": "clip2.wav", "text": "z"}) + "\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.jsonl").write_text("\n")
    items = expand_inputs([str(manifest), str(tmp_path / "empty"), str(tmp_path / "nothing*.wav"),
                           str(tmp_path / "blank.jsonl"), good[0]])
    assert items[0] == good[1] and items[2] == good[2] and items[-1] == good[0]
    assert all(isinstance(i, BadInput) for i in items[1:2] + items[3:6])
    assert items[1].source == f"{manifest}:2" and items[1].reason.startswith(f"{manifest}:2: bad JSON")
    assert [i.reason.split(": ", 1)[1] for i in items[3:6]] == [
        f"no audio files in this folder (looked for {', '.join(AUDIO_SUFFIXES)})",
        "no files match this pattern", "no rows in this manifest"]
    out = tmp_path / "out.jsonl"
    fake = FakeTranscriber()
    summary = run_batch(fake, items, out, progress=False, echo=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [good[1], f"{manifest}:2", good[2], str(tmp_path / "empty"),
                                          str(tmp_path / "nothing*.wav"), str(tmp_path / "blank.jsonl"),
                                          good[0]]
    assert [bool(r.get("error")) for r in rows] == [False, True, False, True, True, True, False]
    assert fake.seen == [good[1], good[2], good[0]] and (summary.done, summary.failed) == (3, 4)


def test_the_model_loads_only_when_an_input_is_left(tmp_path):
    import pytest

    from speechllm.apps.batch import BadInput

    good, _ = make_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")

    def broken_model():
        raise FileNotFoundError("no such model")

    with pytest.raises(FileNotFoundError):
        run_batch(broken_model, good, out, progress=False, echo=False)
    assert out.read_text() == "kept\n"  # a model that fails to load leaves the output alone
    summary = run_batch(broken_model, [BadInput("x.jsonl:1", "x.jsonl:1: bad JSON")], out, progress=False,
                        echo=False)
    assert summary.failed == 1 and json.loads(out.read_text())["error"] == "x.jsonl:1: bad JSON"


def test_resume_matches_inputs_by_resolved_path(tmp_path, monkeypatch):
    good, _ = make_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    run_batch(FakeTranscriber(), good[:2], out, progress=False, echo=False)  # absolute paths
    monkeypatch.chdir(tmp_path)
    relative = [f"./in/{name}" for name in ("clip0.wav", "clip1.wav", "clip2.wav")]
    fake = FakeTranscriber()
    summary = run_batch(fake, relative, out, resume=True, progress=False, echo=False)
    assert fake.seen == [relative[2]] and summary.skipped == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [good[0], good[1], relative[2]]  # "audio" exactly as given


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
    formats = ("srt", "vtt", "txt", "tsv", "json")
    run_batch(FakeTranscriber(), good[2:], out, progress=False, echo=False, formats=formats)
    srt = (out.parent / "clip2.srt").read_text()
    assert srt == "1\n00:00:00,000 --> 00:00:03,000\n3.0 seconds\n"
    assert (out.parent / "clip2.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:03.000\n")
    assert (out.parent / "clip2.txt").read_text() == "3.0 seconds\n"
    assert (out.parent / "clip2.tsv").read_text() == "start\tend\ttext\n0\t3000\t3.0 seconds\n"  # whisper's
    row = json.loads(out.read_text().splitlines()[0])
    row.pop("audio")
    assert json.loads((out.parent / "clip2.json").read_text()) == row


def test_the_command_offers_every_transcript_format():
    from speechllm.apps.commands.transcribe import FORMAT_NAMES
    from speechllm.apps.subtitles import FORMATS

    assert FORMAT_NAMES == tuple(FORMATS)


def test_format_files_of_inputs_sharing_a_name_do_not_overwrite(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "clip.wav", np.zeros(16_000 * (2 if folder == "a" else 3),
                                                          dtype=np.float32), 16_000)
    inputs = [str(tmp_path / "a" / "clip.wav"), str(tmp_path / "b" / "clip.wav")]
    out = tmp_path / "out" / "out.jsonl"
    run_batch(FakeTranscriber(), inputs, out, progress=False, echo=False, formats=("srt",))
    assert sorted(p.name for p in out.parent.glob("*.srt")) == ["a_clip.srt", "b_clip.srt"]
    assert "2.0 seconds" in (out.parent / "a_clip.srt").read_text()
    assert "3.0 seconds" in (out.parent / "b_clip.srt").read_text()
    err = capsys.readouterr().err.strip()
    assert err == (f"note: inputs share a file name; --format files named {inputs[0]} -> a_clip, "
                   f"{inputs[1]} -> b_clip")
