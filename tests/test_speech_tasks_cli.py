"""transcribe / translate / ask route a speech-LLM folder to the speech-LLM, with the jsonl contract."""

import json

import numpy as np
import pytest
import soundfile
import torch
from tiny_models import make_tiny_llm, make_tiny_whisper

import speechllm
from speechllm.apps.cli import main
from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, SpeechLLMTranscriber, save_speechlm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_tasks")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(root / "whisper")), adapter="linear",
                             adapter_options={"hidden_dim": 32}, llm=str(make_tiny_llm(root / "llm")))
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), root / "model")


@pytest.fixture
def wav(tmp_path):
    t = np.arange(12000) / 16000
    path = tmp_path / "clip.wav"
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


def test_load_routes_speechlm_folders(model_dir):
    transcriber = speechllm.load(str(model_dir), task="translate", target="es", max_new_tokens=3)
    assert isinstance(transcriber, SpeechLLMTranscriber)
    assert transcriber.instruction == "Translate the speech into Spanish."
    assert speechllm.speechlm_path("whisper-tiny.en") is None
    asking = speechllm.load(str(model_dir), task="passage-question", prompt="Who?", quote_answers=False)
    assert asking.options.quote_answers is False  # `ask --free-answer`; quoting is the default
    assert speechllm.load(str(model_dir), task="passage-question", prompt="Who?").options.quote_answers
    with pytest.raises(ValueError, match="needs a speech-LLM"):
        speechllm.load("whisper-tiny.en", task="translate")


@pytest.mark.parametrize("argv", [["translate", "{wav}", "--to", "en"], ["ask", "{wav}"],
                                  ["ask", "{wav}", "What is said?"],
                                  ["ask", "{wav}", "Who?", "--free-answer"], ["transcribe", "{wav}"]])
def test_task_commands_write_the_jsonl_contract(model_dir, wav, tmp_path, argv):
    out = tmp_path / "out.jsonl"
    args = [a.format(wav=wav) for a in argv] + ["--model", str(model_dir), "--output", str(out), "-q",
                                                "--segmenter", "fixed"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["audio"] == str(wav) and isinstance(rows[0]["text"], str)
    assert rows[0]["stop"] in ("end", "repetition", "length")  # why the speech-LLM's reply ended


def test_task_command_errors_are_one_line(model_dir, wav, capsys):
    assert main(["translate", str(wav), "--model", "whisper-tiny.en", "-q"]) == 1
    assert main(["ask", str(wav), "  ", "--model", str(model_dir), "-q"]) == 1
    assert main(["ask", str(wav), "--free-answer", "--model", str(model_dir), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "needs a speech-LLM" in err[0] and "QUESTION is empty" in err[1]
    assert "--free-answer goes with a QUESTION" in err[2]
    # a speech-LLM takes --language (told to the Whisper it hears with), no other Whisper option
    assert main(["translate", str(wav), "--model", str(model_dir), "--temperature", "0.2", "-q"]) == 1
    assert main(["translate", str(wav), "--model", str(model_dir), "--language", "es", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--temperature: Whisper decoding options" in err[0]
    assert "hears through its adapter" in err[1]
