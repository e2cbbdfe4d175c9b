"""Every command through the bad-input corpus (``tests/bad_inputs.py``): each bad input ends in
one line naming it (or an error row, the batch going on), exit code != 0, no traceback, and where
the input can be checked up front, no model loaded (the loaders are replaced by ones that fail the
test). In process, with ``capfd`` so that C libraries writing to the terminal are caught too."""

import json

import numpy as np
import pytest
import torch
from bad_inputs import build_corpus

from speechllm.apps.cli import main
from speechllm.limits import MAX_PROMPT_CHARS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, save_speechlm

    root = tmp_path_factory.mktemp("model")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(root / "whisper")), adapter="linear",
                             adapter_options={"hidden_dim": 32}, llm=str(make_tiny_llm(root / "llm")))
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), root / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, model_dir):
    return build_corpus(tmp_path_factory.mktemp("bad"), model_dir)


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: these inputs must be refused before one."""
    import speechllm.apps.finetune
    import speechllm.speechlm.io
    import speechllm.train
    from speechllm import tts

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded for an input that could be checked up front")

    for module, name in ((speechllm, "load"), (tts, "load"), (speechllm.speechlm.io, "load_speechlm"),
                         (speechllm.apps.finetune, "load_base"),
                         (speechllm.train, "train")):
        monkeypatch.setattr(module, name, loaded)


def run(capfd, *argv):
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def one_line(err: str, *needles) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- bad audio: error rows, no model

TASKS = {"transcribe": [], "translate": ["--to", "es"], "ask": [], "ask QUESTION": ["What is said?"]}


@pytest.mark.parametrize("case", ["empty file", "text named .wav", "text named .mp3", "truncated wav",
                                  "3 Hz header", "missing file", "path through a file",
                                  "folder with no audio"])
@pytest.mark.parametrize("task", list(TASKS))
def test_bad_audio_gives_an_error_row_without_loading_a_model(corpus, model_dir, task, case, tmp_path,
                                                              capfd, no_model):
    path, reason = corpus.audio[case]
    command, extra = task.split()[0], TASKS[task]
    out = tmp_path / "out.jsonl"
    code, _, err = run(capfd, command, path, *extra, "--model", model_dir, "--output", out, "-q")
    assert code == 1
    line = one_line(err, path, reason)
    assert line.startswith("failed: ")
    [row] = rows(out)
    assert row["audio"] == str(path) and row["text"] == "" and reason in row["error"]


# ---------------------------------------------------------------- bad arguments: one line, no model


@pytest.mark.parametrize("command", ["transcribe", "translate", "ask"])
def test_output_that_cannot_be_written(corpus, model_dir, command, capfd, no_model):
    for output, reason in ((corpus.out_dir, "is a directory"), (corpus.a_file / "out.jsonl", "is a file")):
        code, _, err = run(capfd, command, corpus.good_wav, "--model", model_dir, "-o", output, "-q")
        assert code == 1
        one_line(err, f"speechllm {command}: error: --output {output}", reason)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["transcribe", "translate", "ask", "finetune", "chat"])
def test_cuda_on_a_cpu_only_torch(corpus, model_dir, command, tmp_path, capfd, no_model):
    if command == "finetune":
        args = ["finetune", "--train", corpus.bad_manifest, "--base", model_dir, "--out", tmp_path / "ft"]
    elif command == "chat":
        pytest.importorskip("gradio")
        args = ["chat", "--model", model_dir]
    else:
        args = [command, corpus.good_wav, "--model", model_dir, "-q"]
    code, _, err = run(capfd, *args, "--device", "cuda")
    assert code == 1
    one_line(err, "--device cuda: CUDA is not available")


@pytest.mark.parametrize("damage,reason", [("corrupt_config_model", "config.json: not valid JSON (line "),
                                           ("truncated_weights_model", "adapter.safetensors: corrupt")])
@pytest.mark.parametrize("command", ["transcribe", "translate", "ask", "finetune"])
def test_damaged_model_folder(corpus, damage, reason, command, tmp_path, capfd, no_model):
    folder = getattr(corpus, damage)
    if command == "finetune":
        good = tmp_path / "train.jsonl"
        good.write_text("".join(json.dumps({"audio": str(corpus.good_wav), "text": "a tone"}) + "\n"
                                for _ in range(3)))
        args = ["finetune", "--train", good, "--eval", good, "--base", folder, "--out", tmp_path / "ft", "-q"]
    else:
        args = [command, corpus.good_wav, "--model", folder, "-q"]
    code, _, err = run(capfd, *args)
    assert code == 1
    one_line(err, f"{folder}/{reason}")


def test_damaged_weights_found_only_while_loading_name_the_model(corpus, model_dir, capfd, monkeypatch):
    from safetensors import SafetensorError

    import speechllm

    def load(*args, **kwargs):  # e.g. a zoo bundle's weights, which the up-front check does not open
        raise SafetensorError("Error while deserializing header: HeaderTooSmall")

    monkeypatch.setattr(speechllm, "load", load)
    code, _, err = run(capfd, "transcribe", corpus.good_wav, "--model", model_dir, "-q")
    assert code == 1
    one_line(err, f"speechllm transcribe: error: --model {model_dir}: damaged model files", "HeaderTooSmall")


def test_huge_question_and_bad_target_language(corpus, model_dir, capfd, no_model):
    code, _, err = run(capfd, "ask", corpus.good_wav, corpus.huge_text, "--model", model_dir)
    assert code == 1
    one_line(err, "QUESTION is 50,000 characters", f"limit of {MAX_PROMPT_CHARS:,}")
    for target in ("klingon", corpus.huge_text):
        code, _, err = run(capfd, "translate", corpus.good_wav, "--to", target, "--model", model_dir)
        assert code == 1
        line = one_line(err, "--to", "unknown language", "en (English)", "es (Spanish)")
        assert len(line) < 300  # a 50,000-character value is not echoed whole


def test_target_language_by_code_or_name_in_any_case():
    from speechllm.apps.commands.preflight import check_language

    assert {check_language(v) for v in ("en", "EN", "English", "english ")} == {"English"}
    assert check_language("Es") == "Spanish"


def test_translate_with_a_model_that_is_not_a_speech_llm(corpus, capfd, no_model):
    code, _, err = run(capfd, "translate", corpus.good_wav, "--model", "no-such-model", "-q")
    line = one_line(err, "--model no-such-model: no such model folder", "needs a speech-LLM")
    assert code == 1 and "speech recognition" not in line
    code, _, err = run(capfd, "translate", corpus.good_wav, "--model", corpus.no_audio_dir, "-q")
    assert code == 1
    one_line(err, f"{corpus.no_audio_dir}: not a speech-LLM model folder")
    code, _, err = run(capfd, "translate", corpus.good_wav, "--model", "whisper-tiny.en", "-q")
    assert code == 1
    one_line(err, "whisper-tiny.en is a speech recognition model", "needs a speech-LLM")


# ---------------------------------------------------------------- batches go on past bad rows


def test_bad_manifest_rows_and_empty_folders_are_error_rows(corpus, model_dir, tmp_path, capfd):
    out = tmp_path / "out.jsonl"
    code, _, err = run(capfd, "transcribe", corpus.bad_manifest, corpus.no_audio_dir, corpus.good_wav,
                       "--model", model_dir, "--output", out, "-q", "--segmenter", "fixed")
    assert code == 1
    got = rows(out)
    assert [r["audio"] for r in got] == [str(corpus.good_wav), corpus.bad_row, f"{corpus.bad_manifest}:3",
                                         str(corpus.no_audio_dir), str(corpus.good_wav)]
    assert [bool(r.get("error")) for r in got] == [False, True, True, True, False]
    assert got[1]["error"].startswith(f"{corpus.bad_row}: bad JSON")
    assert "needs 'text'" in got[2]["error"] and "no audio files" in got[3]["error"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"failed: {got[1]['error']}", f"failed: {got[2]['error']}", f"failed: {got[3]['error']}",
                     "2 transcribed, 3 failed, 0 already done"]


def test_quiet_silences_library_progress_bars(corpus, model_dir, capfd):
    code, out, err = run(capfd, "transcribe", corpus.good_wav, "--model", model_dir, "-q",
                         "--segmenter", "fixed")
    assert code == 0 and err == "" and out == ""  # no "Loading weights" bar from transformers
    import tqdm.auto

    from speechllm.apps.commands.preflight import quiet_libraries

    with quiet_libraries(True):  # transformers' GGUF importer takes tqdm.auto's bar as it is
        list(tqdm.auto.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------- tts


def test_tts_bad_outputs_and_voice(corpus, tmp_path, capfd, no_model):
    for output, reason in ((corpus.out_dir, "is a directory"), (corpus.a_file / "x.wav", "is a file"),
                           (tmp_path / "speech.xyz", "unknown audio format")):
        code, _, err = run(capfd, "tts", "--text", "Hello.", "--output", output, "--voice", "piper-joe")
        assert code == 1
        one_line(err, f"speechllm tts: error: --output {output}", reason)
    assert not [p for p in corpus.root.rglob("*.tmp")]
    code, _, err = run(capfd, "tts", "--text", "Hello.", "--output", tmp_path / "a.wav",
                       "--voice", corpus.corrupt_voice)
    assert code == 1
    one_line(err, f"{corpus.corrupt_voice}/config.json: not valid JSON (line 1")
    code, _, err = run(capfd, "tts", "--text", corpus.huge_text * 3, "--output", tmp_path / "a.wav")
    assert code == 1  # the TTS takes up to 100,000 characters (two hours of speech)
    one_line(err, "150,000 characters, over the limit")


def test_tts_failure_while_streaming_leaves_no_temp_file(tmp_path, capfd, monkeypatch):
    from speechllm import tts

    class Breaks:
        sample_rate = 16_000

        def synthesize(self, text, stream=False):
            yield np.zeros(320, dtype=np.float32)
            raise OSError(28, "No space left on device", str(tmp_path / ".out.wav.tmp"))

    monkeypatch.setattr(tts, "load", lambda *args, **kwargs: Breaks())
    code, _, err = run(capfd, "tts", "--text", "Hello.", "--output", tmp_path / "out.wav", "--stream",
                       "--voice", "piper-joe")
    assert code == 1
    one_line(err, ".out.wav.tmp: no space left on device")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- data validate, finetune


def test_data_validate(corpus, capfd):
    code, out, err = run(capfd, "data", "validate", corpus.bad_manifest)
    assert code == 1 and "1 rows" in out
    lines = err.splitlines()
    assert lines[0].startswith(f"{corpus.bad_row}: bad JSON") and "needs 'text'" in lines[1]
    assert all(str(corpus.bad_manifest) in line for line in lines)
    code, out, err = run(capfd, "data", "validate", corpus.audio_manifest, "--check-audio")
    assert code == 1 and "0 rows" in out
    problems = err.splitlines()[:-1]
    cases = [(p, reason) for p, reason in corpus.audio.values() if p != corpus.no_audio_dir]
    assert len(problems) == len(cases)
    for line, (lineno, (path, reason)) in zip(problems, enumerate(cases, 1), strict=True):
        assert line.startswith(f"{corpus.audio_manifest}:{lineno}: audio {path}: ") and reason in line
    for target, reason in ((corpus.root / "missing.jsonl", "no such manifest"),
                           (corpus.no_audio_dir, "is a directory")):
        code, _, err = run(capfd, "data", "validate", target)
        assert code == 1
        one_line(err, "speechllm data: error: ", target, reason)
    code, _, err = run(capfd, "data", "validate", corpus.good_wav)
    assert code == 1 and err.startswith(f"{corpus.good_wav}: not a text file")


def test_finetune_bad_data_and_out(corpus, model_dir, tmp_path, capfd, no_model):
    cases = [(["--train", corpus.root / "missing"], "missing: no such file or folder"),
             (["--train", corpus.no_audio_dir], "no audio files"),
             (["--train", corpus.bad_manifest, "--eval", corpus.bad_manifest], f"{corpus.bad_row}: bad JSON"),
             (["--train", corpus.bad_manifest, "--out", corpus.a_file], f"--out {corpus.a_file}: is a file")]
    for args, needle in cases:
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "ft"]
        code, _, err = run(capfd, "finetune", *args, "--base", model_dir, "-q")
        assert code == 1
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and all(line.startswith("speechllm finetune: error: ") for line in lines)
        assert needle in lines[0]


# ---------------------------------------------------------------- unexpected errors, --debug


def test_unexpected_errors_are_one_line_unless_debug(corpus, capfd, monkeypatch):
    import speechllm.apps.commands.transcribe as transcribe

    def bug(args, inputs, task="transcribe", **options):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(transcribe, "run_task", bug)
    code, _, err = run(capfd, "transcribe", corpus.good_wav)
    assert code == 1
    one_line(err, "speechllm transcribe: unexpected error (TypeError: unsupported operand)",
             "please report it with the command line", "--debug")
    for argv in (["--debug", "transcribe", corpus.good_wav], ["transcribe", corpus.good_wav, "--debug"],
                 ["data", "validate", corpus.bad_manifest, "--debug"]):
        if argv[0] == "data":
            assert main([str(a) for a in argv]) == 1  # accepted after a nested action too
        else:
            with pytest.raises(TypeError, match="unsupported operand"):
                main([str(a) for a in argv])
    capfd.readouterr()
