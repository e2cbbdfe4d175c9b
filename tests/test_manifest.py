import json
from pathlib import Path

import pytest
import soundfile as sf

from speechllm.manifest import (
    TASKS,
    ManifestError,
    ManifestRow,
    check_row,
    read_manifest,
    summarize,
    validate_manifest,
    write_manifest,
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tasks_registry_and_requirements():
    assert {"asr", "st", "sqa", "tts", "instruct"} <= set(TASKS)
    assert check_row(ManifestRow("a.wav", text="hi")) == []
    assert check_row(ManifestRow("a.wav", task="sqa", answer="yes")) == []
    assert check_row(ManifestRow("a.wav", task="st")) == ["task 'st' needs 'text'"]
    assert check_row(ManifestRow("a.wav", task="instruct", text="ok")) == ["task 'instruct' needs 'prompt'"]
    assert check_row(ManifestRow("a.wav", text="hi", task="karaoke"))[0].startswith("unknown task 'karaoke'")


def test_round_trip_relative_inside_absolute_outside(tmp_path):
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    inside, outside = corpus / "clips" / "a.wav", elsewhere / "b.wav"
    rows = [
        ManifestRow(str(inside), text="hello", lang="en", speaker="s1", duration=1.5, extra={"source": "x"}),
        ManifestRow(str(outside), text="wie geht's", task="st", prompt="Translate to German."),
    ]
    out = corpus / "train.jsonl"
    assert write_manifest(out, rows) == 2
    raw = _lines(out)
    assert raw[0] == {"audio": "clips/a.wav", "text": "hello", "task": "asr", "lang": "en",
                      "speaker": "s1", "duration": 1.5, "source": "x"}
    assert raw[1]["audio"] == str(outside)
    assert read_manifest(out) == rows  # unknown key kept in extra, paths absolute again


def test_relative_paths_resolve_against_manifest_folder(tmp_path, monkeypatch, make_tone):
    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    sf.write(folder / "clips" / "a.wav", make_tone(0.5), 16_000)
    manifest = folder / "m.jsonl"
    manifest.write_text('{"audio": "clips/a.wav", "text": "hi", "speaker": 7}\n')
    monkeypatch.chdir(tmp_path)  # a different working folder must not matter
    (row,) = read_manifest(Path("data/m.jsonl"), check_audio=True)
    assert Path(row.audio) == folder / "clips" / "a.wav"
    assert row.speaker == "7"
    assert row.duration == pytest.approx(0.5)  # filled in by check_audio


def test_every_bad_row_reported_with_its_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [
        '{"audio": "a.wav", "text": "fine"}',  # 1
        '{"audio": "b.wav", "text": "oops"',  # 2 bad JSON
        "",  # 3 blank: skipped
        "[1, 2]",  # 4 not an object
        '{"text": "no audio"}',  # 5
        '{"audio": "c.wav", "text": "x", "task": "karaoke"}',  # 6
        '{"audio": "d.wav", "text": "x", "duration": -1}',  # 7
        '{"audio": "e.wav", "task": "asr"}',  # 8 asr without text
        '{"audio": "f.wav", "text": "x", "duration": "long"}',  # 9
        '{"audio": "g.wav", "task": "sqa", "prompt": "q?", "answer": "a"}',  # 10 fine
        '{"audio": "  ", "text": "x"}',  # 11
    ]
    manifest.write_text("\n".join(lines) + "\n")
    rows, errors = validate_manifest(manifest)
    assert [Path(r.audio).name for r in rows] == ["a.wav", "g.wav"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{manifest}:{n}" for n in (2, 4, 5, 6, 7, 8, 9, 11)]
    assert "bad JSON" in errors[0]
    assert "expected a JSON object" in errors[1]
    assert "missing or empty 'audio'" in errors[2]
    assert "unknown task 'karaoke'" in errors[3]
    assert "'duration' must be a finite number >= 0" in errors[4]
    assert "task 'asr' needs 'text'" in errors[5]
    assert "'duration' must be a number" in errors[6]
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert isinstance(info.value, ValueError)
    assert info.value.errors == errors
    assert all(e in str(info.value) for e in errors)


def test_check_audio_reports_missing_and_unreadable(tmp_path, make_tone):
    sf.write(tmp_path / "ok.wav", make_tone(0.2), 16_000)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    manifest = tmp_path / "m.jsonl"
    names = ("ok.wav", "gone.wav", "junk.wav")
    manifest.write_text("".join(json.dumps({"audio": name, "text": "x"}) + "\n" for name in names))
    assert len(read_manifest(manifest)) == 3  # without check_audio files are not opened
    rows, errors = validate_manifest(manifest, check_audio=True)
    assert len(rows) == 1
    assert errors[0].startswith(f"{manifest}:2: audio {tmp_path / 'gone.wav'}: no such file")
    assert errors[1].startswith(f"{manifest}:3: audio {tmp_path / 'junk.wav'}: unreadable audio")


def test_missing_manifest_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_is_atomic_old_file_kept_on_failure(tmp_path):
    out = tmp_path / "m.jsonl"
    write_manifest(out, [ManifestRow(str(tmp_path / "a.wav"), text="old")])
    before = out.read_bytes()

    bad = [ManifestRow(str(tmp_path / "b.wav"), text="new"),
           ManifestRow(str(tmp_path / "c.wav"), text="x", extra={"blob": object()})]
    with pytest.raises(ManifestError, match="row 2: cannot be written as JSON"):
        write_manifest(out, bad)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temp file left

    def rows_then_crash():
        yield ManifestRow(str(tmp_path / "b.wav"), text="new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_manifest(out, rows_then_crash())
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_write_refuses_rows_reading_would_reject(tmp_path):
    out = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="row 1: task 'asr' needs 'text'"):
        write_manifest(out, [ManifestRow(str(tmp_path / "a.wav"))])
    assert not out.exists()


def test_summarize():
    rows = [ManifestRow("a", text="x", duration=1800.0, lang="en", speaker="s1"),
            ManifestRow("b", text="y", task="st", duration=1800.0, lang="de", speaker="s1"),
            ManifestRow("c", text="z")]
    s = summarize(rows)
    assert (s.rows, s.hours, s.no_duration, s.speakers) == (3, 1.0, 1, 1)
    assert s.tasks == {"asr": 2, "st": 1}
    assert "3 rows, 1.00 h" in s.describe()


def test_data_merge_rebases_paths_and_caps_tasks(tmp_path, capsys):
    from speechllm.apps.cli import main

    for name, task in (("a", "asr"), ("b", "sqa")):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"audio": f"{i}.wav", "text": f"{name} {i}", "task": task, "answer": "x"} for i in range(3)]
        (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mix" / "all.jsonl"
    assert main(["data", "merge", str(tmp_path / "a/m.jsonl"), str(tmp_path / "b/m.jsonl"),
                 "--out", str(out), "--shuffle", "1", "--per-task", "2"]) == 0
    merged = read_manifest(out)
    assert sorted(r.task for r in merged) == ["asr", "asr", "sqa", "sqa"]
    assert all(Path(r.audio).parent.name in ("a", "b") and Path(r.audio).is_absolute() for r in merged)
    (tmp_path / "bad.jsonl").write_text('{"audio": "x.wav"}\n')
    assert main(["data", "merge", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
