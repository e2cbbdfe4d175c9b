"""``speechllm chat`` facing a client that is not the operator (hardening issue #24, items 3, 4, 9).

The model and the voice a client may pick are those the operator offered when the server started;
anything else (a host folder, a hub id, a path) is refused with one message that says nothing about
the host. Errors never show host paths. A long typed message or recording is refused before any
model work. The server keeps its files in one private folder that is gone once it stops."""

import os
import re
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import test_chat

from speechllm.apps.chat import ChatEngine, ChatOptions, TextDelta, register_voice
from speechllm.limits import MAX_PROMPT_CHARS

HOST_PATH = re.compile(r"(^|[\s'\"(=\[])(~|[A-Za-z]:)?[/\\][\w.~-]")  # an absolute path begins here


class ToneVoice:
    sample_rate = 16000

    def stream(self, text):
        yield np.full(800, 0.1, dtype=np.float32)


class StandInModel:
    """The shared model, faked: answers at once; a message with 'crash' fails inside with a host path."""

    def __init__(self, where="/srv/models/secret-model"):
        self.where, self.prompts = where, []

    def stream(self, audio, prompt, options):
        self.prompts.append(prompt)
        if "crash" in prompt:
            raise RuntimeError(f"cannot read {self.where}/adapter.safetensors")
        yield "Fine, thanks."

    def generate(self, audio, prompt, options):
        from speechllm.speechlm import Generation

        return [Generation((), "hello", 0.0)]


pytestmark = pytest.mark.usefixtures("one_thread")
tiny_model_dir = test_chat.tiny_model_dir  # the chat tests' tiny speech-LLM folder


def make_app(model_dir, stand_in=None, **kwargs):
    from speechllm.apps.chat.ui import ChatApp

    register_voice("test-tone-security", ToneVoice)
    return ChatApp(str(model_dir), voice="test-tone-security", loaded_model=stand_in or StandInModel(),
                   options=ChatOptions(max_new_tokens=8, max_seconds=5), **kwargs)


# ---------------------------------------------------------------- item 4: the allow-lists


def test_model_switch_is_limited_to_the_allow_list(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stand_in = StandInModel()
    app = make_app(tiny_model_dir, stand_in)
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")  # a working speech-LLM on the host
    refusals = []
    for name in (str(elsewhere), str(tiny_model_dir), str(tmp_path / "missing"), "someone/some-model",
                 "HuggingFaceTB/SmolLM2-135M-Instruct", "../model", "/etc"):
        with pytest.raises(ValueError) as refused:
            app.load_model(name, "auto")
        refusals.append(str(refused.value))
        assert app.model is stand_in  # the shared model stays
    assert len(set(refusals)) == 1, refusals  # one answer for all: nothing about what exists
    assert not HOST_PATH.search(refusals[0]), refusals[0]
    # the page offers names, never host folders; the operator's folder goes by its own name
    assert app.models.names() == ["model", "speechllm-starter"]
    assert app.public_model == "model"
    assert app.load_model("model", "int8") == "loaded model (int8)"
    assert app.model is not stand_in and app.public_model == "model" and app.quant == "int8"


def test_voice_choice_is_limited_to_the_allow_list(tiny_model_dir, tmp_path):
    app = make_app(tiny_model_dir, voices=["espeak:en-gb+m3"])
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "x.onnx").write_bytes(b"not a voice")
    refusals = []
    for name in (str(folder), str(folder / "x.onnx"), str(tmp_path / "missing.onnx"), "flite:slt",
                 "no-such-tts", str(tiny_model_dir)):
        with pytest.raises(ValueError) as refused:
            app.voice(name)
        refusals.append(str(refused.value))
    assert len(set(refusals)) == 1 and not HOST_PATH.search(refusals[0]), refusals
    offered = app.voices.names()
    assert {"test-tone-security", "espeak:en-gb+m3", "espeak", "none", "piper-joe"} <= set(offered)
    assert not any(HOST_PATH.search(name) for name in offered)
    assert app.voice("none") is None and app.voice("test-tone-security").sample_rate == 16000


def test_operator_paths_are_offered_by_name_only(tiny_model_dir, tmp_path):
    voice_file = tmp_path / "my-voice.onnx"
    voice_file.write_bytes(b"")
    app = make_app(tiny_model_dir, voices=[str(voice_file)])
    assert "my-voice.onnx" in app.voices.names() and str(voice_file) not in app.voices.names()
    assert app.voices.source("my-voice.onnx") == str(voice_file)
    message = app.public_message(f"cannot read {tiny_model_dir}/adapter.safetensors; "
                                 f"{voice_file}: bad header; /var/tmp/x.wav: too long; C:\\Users\\me\\a.wav")
    assert message == ("cannot read model/adapter.safetensors; my-voice.onnx: bad header; "
                       "<path>: too long; <path>")


# ---------------------------------------------------------------- item 3: input limits


def test_a_long_message_is_refused_before_any_model_work():
    model = StandInModel()
    engine = ChatEngine(model, None, ChatOptions())
    started = time.perf_counter()
    with pytest.raises(ValueError, match=f"50,000 characters, over the limit of {MAX_PROMPT_CHARS:,}"):
        list(engine.reply([], text="x" * 50_000))
    assert model.prompts == [] and time.perf_counter() - started < 1
    events = list(engine.reply([], text="y" * MAX_PROMPT_CHARS))  # the limit itself is fine
    assert isinstance(events[0], TextDelta)


def test_a_turn_records_at_most_max_turn_seconds(tmp_path):
    from speechllm.apps.chat.engine import MAX_TURN_SECONDS
    from speechllm.audio import AudioError

    assert MAX_TURN_SECONDS == 120
    with pytest.raises(ValueError, match="max_seconds .* at most 120"):
        ChatOptions(max_seconds=MAX_TURN_SECONDS + 1)
    engine = ChatEngine(StandInModel(), None, ChatOptions(max_seconds=MAX_TURN_SECONDS))
    long_file = tmp_path / "long.wav"
    soundfile.write(long_file, np.zeros(8000 * int(MAX_TURN_SECONDS + 1), dtype=np.float32), 8000)
    for audio in (long_file, np.zeros(16000 * int(MAX_TURN_SECONDS + 1), dtype=np.float32)):
        with pytest.raises(AudioError) as refused:
            list(engine.reply([], audio=audio))
        assert str(refused.value) == "the recording: 121.0 s is over the limit of 120 s"


# ---------------------------------------------------------------- through the API of a running server


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'speechllm[chat]')")
    from speechllm.apps.chat.ui import ServerOptions, launch

    stand_in = StandInModel(where=str(tiny_model_dir))
    app = make_app(tiny_model_dir, stand_in)
    server, url = launch(app, ServerOptions(temp_dir=str(tmp_path_factory.mktemp("served")), max_upload_mb=1),
                         block=False, quiet=True)
    yield app, url
    server.close()


def test_api_refuses_models_and_voices_not_offered(served, tiny_model_dir, tmp_path):
    from gradio_client import Client

    app, url = served
    stand_in = app.model
    client = Client(url, verbose=False)
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    refusals = []
    for name in (str(elsewhere), str(tmp_path / "missing"), "someone/some-model"):
        with pytest.raises(Exception) as refused:
            client.predict(name, "auto", api_name="/load_model")
        refusals.append(str(refused.value).replace(name, "NAME"))
        assert app.model is stand_in
    assert len(set(refusals)) == 1, refusals
    refusals = []
    for name in (str(tmp_path), str(tmp_path / "missing.onnx"), "flite:slt"):
        with pytest.raises(Exception) as refused:
            client.predict(None, "hi", name, 16, api_name="/respond")
        refusals.append(str(refused.value).replace(name, "NAME"))
    assert len(set(refusals)) == 1, refusals
    assert stand_in.prompts == []  # nothing reached the model
    chat, *_ = client.predict(None, "hi", "none", 16, api_name="/respond")  # an offered voice works
    assert "Fine, thanks." in str(chat[-1]["content"])


def test_api_errors_show_no_host_paths(served, tmp_path):
    from gradio_client import Client, handle_file

    app, url = served
    client = Client(url, verbose=False)
    too_long = tmp_path / "long.wav"
    soundfile.write(too_long, np.zeros(16000 * 6, dtype=np.float32), 16000)
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(str(too_long)), "", "none", 16, api_name="/respond")
    assert "over the limit of 5 s" in str(refused.value) and not HOST_PATH.search(str(refused.value))
    with pytest.raises(Exception) as failed:  # an unexpected failure inside the model
        client.predict(None, "please crash", "none", 16, api_name="/respond")
    assert "adapter.safetensors" in str(failed.value) and not HOST_PATH.search(str(failed.value))


def test_api_refuses_a_long_message_quickly(served):
    from gradio_client import Client

    app, url = served
    client = Client(url, verbose=False)
    before = len(app.model.prompts)
    started = time.perf_counter()
    with pytest.raises(Exception, match=f"over the limit of {MAX_PROMPT_CHARS:,}"):
        client.predict(None, "x" * 50_000, "none", 16, api_name="/respond")
    assert time.perf_counter() - started < 5 and len(app.model.prompts) == before


# ---------------------------------------------------------------- item 9: temporary files


def test_server_files_live_in_a_private_folder_removed_on_close(tiny_model_dir, tmp_path, served):
    from gradio_client import Client, handle_file

    from speechllm.apps.chat.ui import ServerOptions, launch

    root = tmp_path / "temp-root"
    root.mkdir()
    before = os.environ.get("GRADIO_TEMP_DIR")
    server, url = launch(make_app(tiny_model_dir), ServerOptions(temp_dir=str(root)), block=False, quiet=True)
    try:
        question = tmp_path / "question.wav"
        soundfile.write(question, np.zeros(8000, dtype=np.float32), 16000)
        Client(url, verbose=False).predict(handle_file(str(question)), "", "test-tone-security", 16,
                                           api_name="/respond")
        (private,) = root.iterdir()  # one folder of the server's own
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        kept = [p for p in private.rglob("*") if p.is_file()]
        answers = [p for p in kept if p.suffix == ".wav" and p.name != "question.wav"]
        assert any(p.name == "question.wav" for p in kept) and answers  # the upload and the answer
    finally:
        server.close()
    assert list(root.iterdir()) == []  # nothing left behind
    assert os.environ.get("GRADIO_TEMP_DIR") == before  # the other server's setting is back


def test_private_temp_folder_is_removed_at_exit(tmp_path):
    code = ("from speechllm.apps.chat.exposure import PrivateTempDir\n"
            f"folder = PrivateTempDir(parent={str(tmp_path)!r})\n"
            "open(folder.path + '/upload.wav', 'w').write('x')\n"
            "print(folder.path)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    made = done.stdout.strip()
    assert made.startswith(str(tmp_path)) and not os.path.exists(made) and list(tmp_path.iterdir()) == []
