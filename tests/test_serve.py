"""``speechllm serve``: the real server (uvicorn on a free loopback port, in a thread) driven by the
official ``openai`` client. A tiny speech-LLM built here transcribes, translates and chats, a tiny
(English-only) Whisper and, where installed, whisper-tiny.en are served beside it, a tiny voice of the
project's own streaming TTS speaks; every error case of the API."""

import asyncio
import base64
import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch

from speechllm.apps.cli import main
from speechllm.zoo import ZOO

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "test-key-123"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")]  # openai: translations


def wav_bytes(audio: np.ndarray, sr: int = 16000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, sr, format="WAV", subtype="PCM_16")
    return out.getvalue()


def tone(seconds: float, sr: int = 16000, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def clip_file(i: int) -> tuple[str, bytes]:
    """The i-th of a set of different little recordings, as an upload."""
    return f"clip{i}.wav", wav_bytes(tone(1.0 + 0.05 * i, freq=150.0 + 37 * i, seed=i))


@pytest.fixture(scope="module")
def tiny_speechlm(tmp_path_factory):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, save_speechlm

    root = tmp_path_factory.mktemp("serve-model")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(root / "whisper")), adapter="linear",
                             adapter_options={"hidden_dim": 32}, llm=str(make_tiny_llm(root / "llm")))
    torch.manual_seed(0)
    return save_speechlm(SpeechLLM.build(config), root / "model")


@pytest.fixture(scope="module")
def tiny_voice(tmp_path_factory):
    """A random voice of the project's own streaming TTS (text-speech LM, flow, vocoder), built here."""
    from tiny_models import make_tiny_llm

    from speechllm.tts.flow import FlowConfig, FlowMatching
    from speechllm.tts.lm import LMConfig, TextSpeechLM
    from speechllm.tts.synthesize import SynthesisOptions, save_tts
    from speechllm.tts.vocoder import VocoderConfig, Vocos

    root = tmp_path_factory.mktemp("serve-voice")
    torch.manual_seed(0)
    backbone = str(make_tiny_llm(root / "llm", hidden=32, layers=3))
    lm = TextSpeechLM.build(LMConfig(backbone=backbone, n_layers=2, n_speech=24, text_chunk=2, speech_chunk=3,
                                     lora_rank=4))
    flow = FlowMatching(FlowConfig(n_tokens=24, dim=32, n_layers=2, n_heads=2))
    vocoder = Vocos(VocoderConfig(dim=16, ffn=32, n_layers=1))
    return save_tts(root / "voice", lm, flow, vocoder, torch.randn(80, 8) - 5, torch.randint(0, 24, (4,)),
                    SynthesisOptions(flow_steps=2, max_speech_per_text=2.0))


@pytest.fixture(scope="module")
def server(tiny_speechlm, tiny_voice, tmp_path_factory):
    from tiny_models import make_tiny_whisper

    from speechllm.apps.serve import Limits, ModelOptions, ServedModel, ServedVoice, Server, create_app

    options = ModelOptions(segmenter="fixed", batch_size=8, max_queue=64)
    whisper = make_tiny_whisper(tmp_path_factory.mktemp("serve-whisper") / "whisper")
    models = [ServedModel.load(f"tiny={tiny_speechlm}", options), ServedModel.load(str(whisper), options)]
    if ZOO["whisper-tiny.en"].bundle.folder() is not None:  # real word times need a real Whisper
        models.append(ServedModel.load("whisper-tiny.en", options))
    voices = [ServedVoice.load(f"voice={tiny_voice}", 8)]
    if shutil.which("espeak-ng"):  # a voice with a rate control (the tiny one has none)
        voices.append(ServedVoice.load("espeak", 8))
    serve = Server(models, voices, Limits(max_upload_bytes=2**20, max_seconds=20.0, max_new_tokens=12),
                   api_key=KEY)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(serve), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield serve, f"http://127.0.0.1:{port}/v1", tmp_path_factory.mktemp("serve-files")
    uv.should_exit = True
    thread.join(timeout=10)
    serve.close()
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1], api_key=KEY, max_retries=0, timeout=60)


def test_models_are_the_ones_given_at_start(client):
    ids = [m.id for m in client.models.list().data]
    assert [i for i in ids if i != "whisper-tiny.en"] == ["tiny", "whisper", "speechllm-tts"]
    assert client.models.retrieve("tiny").id == "tiny"  # folders are served by name, not by host path
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")


@pytest.fixture(scope="module")
def solo(server):
    """What the served speech-LLM transcribes each clip as, one at a time, without the server."""
    from speechllm.audio import load_audio

    transcriber = server[0].models["tiny"].transcriber
    texts = []
    for i in range(20):
        name, data = clip_file(i)
        path = Path(server[2]) / name
        path.write_bytes(data)
        texts.append(transcriber.transcribe(load_audio(path)).text)
    return texts


def test_transcription_in_every_format(client, solo):
    from speechllm.apps.subtitles import to_srt, to_vtt
    from speechllm.transcriber import Segment, Transcript

    upload = clip_file(3)

    def create(fmt, **extra):
        return client.audio.transcriptions.create(model="tiny", file=upload, response_format=fmt,
                                                  temperature=0, **extra)

    want = solo[3]
    assert want and create("json").text == want
    assert create("text") == want + "\n"
    verbose = create("verbose_json", timestamp_granularities=["segment"])
    assert verbose.text == want and verbose.language == "english" and verbose.task == "transcribe"
    assert abs(verbose.duration - 1.15) < 1e-6
    (segment,) = verbose.segments  # one fixed cut: the whole clip
    assert segment.start == 0.0 and segment.end == pytest.approx(1.15) and segment.text == want
    assert getattr(verbose, "words", None) is None  # words only when asked
    transcript = Transcript(want, (Segment(0.0, 1.15, want),), 1.15)
    srt = create("srt")
    assert srt == to_srt(transcript) and srt.startswith("1\n00:00:00,000 --> 00:00:01,150\n")
    assert create("vtt") == to_vtt(transcript) and create("vtt").startswith("WEBVTT\n\n00:00:00.000 --> ")


@pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None, reason="whisper-tiny.en not installed")
def test_transcription_streamed_as_it_is_decoded(client, solo):
    for model, upload in (("tiny", clip_file(4)), ("whisper", clip_file(5))):
        whole = client.audio.transcriptions.create(model=model, file=upload).text
        events = list(client.audio.transcriptions.create(model=model, file=upload, stream=True))
        assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
        assert events[-1].type == "transcript.text.done" and events[-1].text == whole
        assert "".join(e.delta for e in events[:-1]) == whole
        if model == "tiny":
            assert whole == solo[4] and len(events) >= 2  # something was said, and sent as a delta
    with pytest.raises(openai.BadRequestError, match="response_format must be json or text"):
        client.audio.transcriptions.create(model="tiny", file=clip_file(4), stream=True,
                                           response_format="srt")


def test_whisper_words_prompt_and_temperature(client):
    clip = EXAMPLES / "weather_awb.flac"
    want = clip.with_suffix(".txt").read_text().strip()
    verbose = client.audio.transcriptions.create(
        model="whisper-tiny.en", file=clip, response_format="verbose_json", timestamp_granularities=["word"],
        prompt="Weather report.")
    assert verbose.text == want and verbose.language == "english"
    assert [w.word for w in verbose.words] == want.split()  # Whisper's own word times (cross-attention DTW)
    times = [t for w in verbose.words for t in (w.start, w.end)]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= verbose.duration + 0.01
    segment = verbose.segments[0]
    assert segment.temperature == 0.0 and segment.avg_logprob < 0 and segment.compression_ratio > 0
    hot = client.audio.transcriptions.create(model="whisper-tiny.en", file=clip, temperature=0.3,
                                             response_format="verbose_json")
    assert all(s.temperature == 0.3 for s in hot.segments)  # sampled at the temperature asked
    for field, extra in (("prompt", {"prompt": "hi"}), ("temperature", {"temperature": 0.5}),
                         ("timestamp_granularities", {"timestamp_granularities": ["word"],
                                                      "response_format": "verbose_json"})):
        with pytest.raises(openai.BadRequestError, match="speech-LLM") as caught:
            client.audio.transcriptions.create(model="tiny", file=clip, **extra)
        assert caught.value.body["param"] == field


def test_translation(client):
    upload = clip_file(5)
    translated = client.audio.translations.create(model="tiny", file=upload)
    assert isinstance(translated.text, str)
    verbose = client.audio.translations.create(model="tiny", file=upload, response_format="verbose_json")
    assert verbose.task == "translate" and verbose.language == "english" and verbose.text == translated.text
    with pytest.raises(openai.BadRequestError, match="English-only") as caught:  # an English Whisper cannot
        client.audio.translations.create(model="whisper", file=upload)
    assert caught.value.body["code"] == "model_not_supported" and caught.value.body["param"] == "model"


def test_speech_is_streamed_and_decodes(client):
    text = "Hello world. The weather will be sunny tomorrow."

    def speak(fmt):
        return client.audio.speech.create(model="speechllm-tts", voice="voice", input=text,
                                          response_format=fmt).read()

    with client.audio.speech.with_streaming_response.create(
            model="speechllm-tts", voice="voice", input=text, response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-sample-rate"] == "16000"
        chunks = list(response.iter_bytes(chunk_size=None))
    assert len(chunks) >= 3  # the header, then the audio chunk by chunk as the voice makes it
    audio, sr = soundfile.read(io.BytesIO(b"".join(chunks)), dtype="int16")
    assert sr == 16000 and len(audio) >= 320 and np.abs(audio).max() > 0
    assert np.array_equal(np.frombuffer(speak("pcm"), dtype="<i2"), audio)  # seeded: the same samples
    flac, flac_sr = soundfile.read(io.BytesIO(speak("flac")), dtype="int16")
    assert flac_sr == 16000 and np.array_equal(flac, audio)
    # mp3 (OpenAI's default, so also what a request without response_format gets) and opus: lossy
    default = client.audio.speech.create(model="speechllm-tts", voice="voice", input=text)
    assert default.response.headers["content-type"] == "audio/mpeg"
    for fmt, body in (("mp3", default.read()), ("opus", speak("opus"))):
        decoded, rate = soundfile.read(io.BytesIO(body), dtype="float32")
        assert rate == 16000 and abs(len(decoded) - len(audio)) < 0.2 * rate, fmt  # codec delay, padding
        assert np.sqrt(np.mean(decoded**2)) > 0.3 * np.sqrt(np.mean((audio / 32768.0) ** 2)), fmt
    events = client.audio.speech.create(model="speechllm-tts", voice="voice", input=text,
                                        response_format="pcm", stream_format="sse")
    assert events.response.headers["content-type"].startswith("text/event-stream")
    lines = events.text.splitlines()
    bodies = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [b["type"] for b in bodies] == ["speech.audio.delta"] * (len(bodies) - 1) + ["speech.audio.done"]
    pieces = b"".join(base64.b64decode(b["audio"]) for b in bodies[:-1])
    assert len(bodies) >= 3 and np.array_equal(np.frombuffer(pieces, dtype="<i2"), audio)  # as the pcm body
    with pytest.raises(openai.BadRequestError, match="stream_format"):
        client.audio.speech.create(model="speechllm-tts", voice="voice", input="Hi.", stream_format="events")
    with pytest.raises(openai.BadRequestError, match="voice"):
        client.audio.speech.create(model="speechllm-tts", voice="alloy", input="Hello.")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        speak_aac = {"model": "speechllm-tts", "voice": "voice", "input": "Hello.", "response_format": "aac"}
        client.audio.speech.create(**speak_aac)
    with pytest.raises(openai.BadRequestError, match="cannot change its speed"):
        client.audio.speech.create(model="speechllm-tts", voice="voice", input="Hello.", speed=1.5)
    with pytest.raises(openai.BadRequestError, match="between 0.25 and 4"):
        client.audio.speech.create(model="speechllm-tts", voice="voice", input="Hello.", speed=5.0)
    with pytest.raises(openai.APIStatusError, match="over the limit") as caught:
        client.audio.speech.create(model="speechllm-tts", voice="voice", input="word " * 1000)
    assert caught.value.status_code == 413


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speech_speed_changes_the_duration(client):
    def seconds(speed):
        body = client.audio.speech.create(model="speechllm-tts", voice="espeak", speed=speed,
                                          input="The weather will be sunny tomorrow.", response_format="wav")
        audio, rate = soundfile.read(io.BytesIO(body.read()))
        return len(audio) / rate

    normal, fast = seconds(1.0), seconds(2.0)
    assert 0.4 * normal < fast < 0.7 * normal


def test_chat_with_input_audio_streamed_and_whole(client):
    clip = base64.b64encode(clip_file(2)[1]).decode()
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is said?"},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}]}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    answer = whole.choices[0].message.content
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert answer and whole.model == "tiny" and whole.id.startswith("chatcmpl-")
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert len(pieces) >= 3 and "".join(pieces).strip() == answer.strip()  # the same greedy reply, in pieces
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
               {"role": "assistant", "content": "hi"}, {"role": "user", "content": "what is the weather"}]
    text_only = client.chat.completions.create(model="tiny", messages=history, max_tokens=4)
    assert isinstance(text_only.choices[0].message.content, str)


def expect(error_type, status, call, code=None, match=None):
    with pytest.raises(error_type) as caught:
        call()
    assert caught.value.status_code == status
    body = caught.value.body
    assert set(body) >= {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["code"] == code, body
    if match is not None:
        assert match in body["message"], body
    return body


def test_errors_are_openai_style(client, server, tmp_path):
    tr = client.audio.transcriptions
    bad = ("broken.wav", b"definitely not audio" * 50)
    body = expect(openai.BadRequestError, 400, lambda: tr.create(model="tiny", file=bad),
                  code="invalid_audio", match="broken.wav: unreadable audio")
    assert "/tmp" not in body["message"] and "upload" not in body["message"]  # no host paths
    expect(openai.BadRequestError, 400, lambda: tr.create(model="tiny", file=("empty.wav", b"")),
           code="invalid_audio", match="empty.wav: ")
    long_clip = ("long.wav", wav_bytes(tone(25.0, 8000), 8000))  # 400 KB, 25 s: over the 20 s cap
    expect(openai.APIStatusError, 413, lambda: tr.create(model="tiny", file=long_clip),
           code="too_large", match="25.0 s of audio is over the limit of 20 s")
    big = ("big.wav", wav_bytes(tone(40.0)))  # 1.3 MB: over the 1 MiB upload cap
    expect(openai.APIStatusError, 413, lambda: tr.create(model="tiny", file=big), code="too_large",
           match="over the upload limit")
    host, port = server[1].split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as raw:  # a body over the whole-request cap is
        raw.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 3145728\r\n"
                    + f"Authorization: Bearer {KEY}\r\n\r\n".encode())  # refused before any of it is read
        answer = b""
        while piece := raw.recv(4096):  # the server closes the connection after its answer
            answer += piece
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and '"code": "too_large"' in answer
    upload = clip_file(0)
    for name in ("whisper-1", "/etc/hostname", str(server[2])):  # never loaded for a client
        expect(openai.NotFoundError, 404, lambda n=name: tr.create(model=n, file=upload),
               code="model_not_found")
    expect(openai.NotFoundError, 404, lambda: client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=[{"role": "user", "content": "hi"}]), code="model_not_found")
    expect(openai.NotFoundError, 404, lambda: client.audio.speech.create(
        model="tts-1", voice="alloy", input="hi"), code="model_not_found")
    expect(openai.BadRequestError, 400, lambda: tr.create(model="tiny", file=upload, response_format="xml"),
           match="response_format")
    expect(openai.BadRequestError, 400, lambda: tr.create(model="whisper", file=upload, language="de"),
           match="English only")
    expect(openai.BadRequestError, 400, lambda: tr.create(model="tiny", file=upload, temperature=3),
           match="temperature")
    expect(openai.BadRequestError, 400, lambda: tr.create(
        model="tiny", file=upload, timestamp_granularities=["word"]), match="verbose_json")
    chat = client.chat.completions
    audio_part = {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}
    expect(openai.BadRequestError, 400, lambda: chat.create(
        model="tiny", messages=[{"role": "user", "content": [audio_part]}]), code="invalid_audio",
        match="base64")
    junk = base64.b64encode(b"RIFF....WAVEjunk" * 10).decode()
    not_audio = {"type": "input_audio", "input_audio": {"data": junk}}
    expect(openai.BadRequestError, 400, lambda: chat.create(
        model="tiny", messages=[{"role": "user", "content": [not_audio]}]), match="input_audio.wav: ")
    expect(openai.BadRequestError, 400, lambda: chat.create(
        model="whisper", messages=[{"role": "user", "content": "hi"}]), code="model_not_supported")
    expect(openai.BadRequestError, 400, lambda: chat.create(model="tiny", messages=[]), match="messages")
    expect(openai.APIStatusError, 413, lambda: chat.create(
        model="tiny", messages=[{"role": "user", "content": "x" * 5000}]), code="too_large")
    for headers in ({"Authorization": "Bearer wrong-key"}, {}):
        other = httpx.get(f"{server[1]}/models", headers=headers)
        assert other.status_code == 401 and other.json()["error"]["code"] == "invalid_api_key"
    stranger = openai.OpenAI(base_url=server[1], api_key="wrong", max_retries=0)
    expect(openai.AuthenticationError, 401, lambda: stranger.audio.transcriptions.create(
        model="tiny", file=upload), code="invalid_api_key")
    auth = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.post(f"{server[1]}/audio/transcriptions", headers=auth, data={"model": "tiny"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert httpx.get(f"{server[1]}/nowhere", headers=auth).json()["error"]["code"] == "not_found"


def test_full_queue_answers_503(client, server, monkeypatch):
    from speechllm.apps.serve import ModelOptions, ServedModel
    from speechllm.apps.serve.models import RUNNERS
    from speechllm.apps.serve.workers import Job

    serve = server[0]
    busy = ServedModel("busy", serve.models["tiny"].transcriber, ModelOptions(segmenter="fixed", max_queue=1))
    monkeypatch.setitem(serve.models, "busy", busy)
    gate = threading.Event()
    monkeypatch.setitem(RUNNERS, "hold", lambda model, jobs: gate.wait(20))
    busy.worker.submit(Job("hold", None, None, loop=asyncio.new_event_loop()))
    upload = clip_file(1)
    try:
        while busy.worker.waiting:  # the worker is busy with the held job; the queue is empty
            time.sleep(0.01)
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(client.audio.transcriptions.create, model="busy", file=upload)
            while not busy.worker.waiting:
                time.sleep(0.01)
            body = expect(openai.InternalServerError, 503, lambda: client.audio.transcriptions.create(
                model="busy", file=upload), code="queue_full")
            assert body["type"] == "server_error"
            gate.set()
            assert isinstance(queued.result(timeout=30).text, str)  # the queued one was answered
    finally:
        gate.set()
        busy.worker.close()


def test_concurrent_requests_are_batched_and_none_lost(client, server, solo):
    worker = server[0].models["tiny"].worker
    before = sum(n * count for n, count in worker.batch_sizes.items())
    with ThreadPoolExecutor(20) as pool:
        texts = list(pool.map(
            lambda i: client.audio.transcriptions.create(model="tiny", file=clip_file(i)).text, range(20)))
    assert texts == solo  # each answer is its own clip's transcript, as if it had been alone
    assert sum(n * count for n, count in worker.batch_sizes.items()) - before == 20  # each request ran once
    assert max(worker.batch_sizes) > 1  # and requests shared batches


def test_a_slow_upload_blocks_no_one(client, server, solo):
    """A client that sends half its upload and stalls holds neither the model nor the other requests."""
    host, port = server[1].split("//")[1].split("/")[0].split(":")
    body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny\r\n" + b"x" * 50_000
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: 400000\r\n".encode()
                     + b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + body)
        started = time.perf_counter()
        assert client.audio.transcriptions.create(model="tiny", file=clip_file(4)).text == solo[4]
        assert time.perf_counter() - started < 10


def test_serve_command_checks_before_serving(capsys):
    assert main(["serve", "--model", "no-such-model-xyz", "--voice", "none", "--port", "1"]) == 1
    assert main(["serve", "--port", "0"]) == 1
    assert main(["serve", "--model", "a=whisper-tiny.en", "--model", "a=base", "--voice", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("speechllm serve: error: ") for line in err)
    assert "no-such-model-xyz" in err[0] and "--port 0" in err[1] and "'a'" in err[2]
