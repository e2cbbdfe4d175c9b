import json
from pathlib import Path

import pytest
import soundfile as sf

from speechllm.apps import cli
from speechllm.data_recipes.importers import IMPORTERS, ImportOptions, import_corpus
from speechllm.manifest import read_manifest, write_manifest

SR = 16_000


@pytest.fixture
def audio(make_tone):
    def write(path: Path, seconds: float = 0.25) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, make_tone(seconds), SR, format=path.suffix.lstrip(".").upper())
        return path

    return write


def test_registry_has_the_four_formats():
    assert {"librispeech", "commonvoice", "kaldi", "folder"} <= set(IMPORTERS)


def test_librispeech(tmp_path, audio):
    chapter = tmp_path / "LibriSpeech" / "dev" / "19" / "198"
    audio(chapter / "19-198-0000.flac", 0.5)
    audio(chapter / "19-198-0001.wav", 0.25)  # .wav accepted too
    trans = chapter / "19-198.trans.txt"
    trans.write_text("19-198-0000 HELLO WORLD\n19-198-0001 GOOD MORNING\n19-198-0002 NO AUDIO HERE\n")
    result = import_corpus("librispeech", tmp_path / "LibriSpeech")
    assert [(r.text, r.speaker) for r in result.rows] == [("HELLO WORLD", "19"), ("GOOD MORNING", "19")]
    assert result.rows[0].duration == pytest.approx(0.5)
    assert result.problems == [
        f"{trans}:3: no audio 19-198-0002.flac or 19-198-0002.wav next to the transcript"]

    out = tmp_path / "LibriSpeech" / "dev.jsonl"  # manifest above the audio: relative paths
    write_manifest(out, result.rows)
    assert json.loads(out.read_text().splitlines()[0])["audio"] == "dev/19/198/19-198-0000.flac"
    assert read_manifest(out, check_audio=True) == result.rows


def test_commonvoice(tmp_path, audio):
    cv = tmp_path / "cv-corpus" / "pt"
    audio(cv / "clips" / "common_voice_pt_1.mp3")  # Common Voice ships mp3
    audio(cv / "clips" / "common_voice_pt_2.wav")
    tsv = cv / "train.tsv"
    tsv.write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tlocale\n"
        'abc\tcommon_voice_pt_1.mp3\tOlá "mundo".\t2\t0\tpt\n'
        "def\tcommon_voice_pt_2.wav\tBom dia.\t2\t0\tpt\n"
        "ghi\tcommon_voice_pt_3.wav\t\t2\t0\tpt\n"
        "broken line without tabs\n"
    )
    result = import_corpus("commonvoice", tsv)
    assert [(r.text, r.speaker, r.lang) for r in result.rows] == [
        ('Olá "mundo".', "abc", "pt"), ("Bom dia.", "def", "pt")]
    assert result.problems == [f"{tsv}:4: empty transcript for common_voice_pt_3.wav",
                               f"{tsv}:5: expected 6 tab-separated fields, got 1"]

    # --clips elsewhere, --lang overrides the locale, a missing clip is reported on its line
    moved = tmp_path / "elsewhere"
    (cv / "clips").rename(moved)
    (moved / "common_voice_pt_2.wav").unlink()
    result = import_corpus("commonvoice", tsv, ImportOptions(clips=moved, lang="pt-BR"))
    assert [(r.lang, Path(r.audio).parent) for r in result.rows] == [("pt-BR", moved)]
    assert result.problems[-1] == f"{tsv}:3: no such file (audio {moved / 'common_voice_pt_2.wav'})"


def test_kaldi(tmp_path, audio):
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    a, b = audio(tmp_path / "wav" / "a.wav"), audio(tmp_path / "wav" / "b.flac", 0.5)
    (data / "wav.scp").write_text(
        f"utt-a {a}\nutt-b {b}\nutt-c sox in.wav -t wav - |\nutt-d {tmp_path / 'wav' / 'nope.wav'}\n"
        f"utt-e {a}\n"
    )
    (data / "text").write_text(
        "utt-a hello there\nutt-b good bye\nutt-c piped\nutt-d gone\nutt-x orphan\nutt-e\n")
    (data / "utt2spk").write_text("utt-a spk1\nutt-b spk2\n")
    result = import_corpus("kaldi", data)
    assert [(Path(r.audio), r.text, r.speaker) for r in result.rows] == [
        (a, "hello there", "spk1"), (b, "good bye", "spk2")]
    assert result.problems == [
        f"{data / 'wav.scp'}:3: piped command entries ('... |') are not supported (utt-c); "
        "write the audio to files and list their paths",
        f"{data / 'text'}:5: utterance utt-x has no entry in wav.scp",
        f"{data / 'text'}:6: empty transcript for utt-e",
        f"{data / 'wav.scp'}:4: no such file (audio {tmp_path / 'wav' / 'nope.wav'})",
    ]

    (data / "text").write_text("utt-a hello there\n")
    result = import_corpus("kaldi", data)
    assert f"{data / 'wav.scp'}:2: utterance utt-b has no transcript in text" in result.problems

    (data / "segments").write_text("seg1 utt-a 0.0 1.0\n")
    with pytest.raises(ValueError, match=r"segments:1: 'segments' files are not supported"):
        import_corpus("kaldi", data)


def test_folder_relative_round_trip(tmp_path, audio):
    src = tmp_path / "corpus"
    audio(src / "a.wav")
    (src / "a.txt").write_text("first\nline two\n")
    audio(src / "sub" / "b.flac", 0.5)
    (src / "sub" / "b.txt").write_text("second")
    audio(src / "sub" / "c.ogg")  # no transcript
    audio(src / "d.wav")
    (src / "d.txt").write_text("  \n")  # empty transcript
    audio(src / ".hidden" / "e.wav")  # dot folders are skipped
    result = import_corpus("folder", src, ImportOptions(lang="en"))
    assert [(Path(r.audio).relative_to(src).as_posix(), r.text, r.lang) for r in result.rows] == [
        ("a.wav", "first line two", "en"), ("sub/b.flac", "second", "en")]
    assert result.problems == [f"{src / 'd.txt'}: empty transcript",
                               f"{src / 'sub' / 'c.ogg'}: no transcript c.txt next to it"]

    out = src / "manifest.jsonl"
    write_manifest(out, result.rows)
    assert [json.loads(line)["audio"] for line in out.read_text().splitlines()] == ["a.wav", "sub/b.flac"]
    moved = tmp_path / "moved"
    src.rename(moved)  # the corpus folder moves as a whole
    assert [Path(r.audio) for r in read_manifest(moved / "manifest.jsonl", check_audio=True)] == [
        moved / "a.wav", moved / "sub" / "b.flac"]


def test_unreadable_audio_and_bad_options(tmp_path, audio):
    src = tmp_path / "c"
    src.mkdir()
    (src / "x.wav").write_bytes(b"RIFF garbage")
    (src / "x.txt").write_text("hi")
    result = import_corpus("folder", src)
    assert result.rows == []
    assert result.problems[0].startswith(f"{src / 'x.wav'}: unreadable audio")
    assert import_corpus("folder", src, ImportOptions(duration=False)).rows[0].duration is None
    with pytest.raises(ValueError, match="instruct"):
        import_corpus("folder", src, ImportOptions(task="instruct"))
    with pytest.raises(ValueError, match="--clips does not apply to folder"):
        import_corpus("folder", src, ImportOptions(clips=tmp_path))
    with pytest.raises(ValueError, match="unknown format"):
        import_corpus("timit", src)


def test_cli_import_and_validate(tmp_path, audio, capsys):
    src = tmp_path / "corpus"
    audio(src / "a.wav")
    (src / "a.txt").write_text("hello")
    out = tmp_path / "out" / "m.jsonl"
    assert cli.main(["data", "import", "folder", str(src), "--out", str(out), "--lang", "en"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_manifest(out)[0].lang == "en"
    assert cli.main(["data", "validate", str(out), "--check-audio"]) == 0
    assert "1 rows" in capsys.readouterr().out

    audio(src / "b.wav")  # no b.txt: dropped, reported, exit 1, good rows still written
    assert cli.main(["data", "import", "folder", str(src), "--out", str(out), "--no-duration"]) == 1
    err = capsys.readouterr().err
    assert f"{src / 'b.wav'}: no transcript b.txt next to it" in err
    assert "1 problem(s)" in err
    assert [r.duration for r in read_manifest(out)] == [None]

    with out.open("a") as f:
        f.write('{"audio": "gone.wav", "text": "x", "task": "nope"}\n')
    assert cli.main(["data", "validate", str(out)]) == 1
    assert f"{out}:2: unknown task 'nope'" in capsys.readouterr().err

    assert cli.main(["data", "import", "kaldi", str(src), "--out", str(out)]) == 1  # no wav.scp: one line
    assert "wav.scp: not found" in capsys.readouterr().err
