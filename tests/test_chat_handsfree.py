"""The hands-free chat: stopping an answer (engine), a tab's live session (resampling, turns, barge-in),
and a real headless browser (Debian chromium via selenium) whose fake microphone plays a recording of
three spoken turns: two are answered without a button, the third interrupts the answer.

What the browser test measures, and how: the page's microphone stream is tapped in the page itself
(getUserMedia is wrapped before Gradio's scripts run; a ScriptProcessor finds where the fake
microphone's speech starts and ends, on the page's clock, performance.now()). The page's player
records when each answer's first chunk is scheduled to sound and when it stops sound (barge-in). So:
end of user speech -> first answer audio, and user speech onset -> answer audio stopped, both on one
clock in one page."""

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile
import test_chat

from speechllm.apps.chat import ChatEngine, ChatOptions, SpeechChunk, TextDelta, TurnDone, register_voice
from speechllm.apps.chat.turns import BargeIn, SpeechStarted, TurnEnded, TurnOptions, TurnPaused
from speechllm.zoo import ZOO

SR = 16_000
needs_silero = pytest.mark.skipif(ZOO["silero-vad"].bundle.folder() is None,
                                  reason="silero-vad not installed")
pytestmark = pytest.mark.usefixtures("one_thread")
one_thread = test_chat.one_thread


class SlowModel:
    """Streams a long answer a word at a time (``delay`` s each); records how far each answer got."""

    def __init__(self, words=40, delay=0.0):
        self.words, self.delay, self.made = words, delay, []

    def stream(self, audio, prompt, options):
        self.made.append(0)
        for i in range(self.words):
            time.sleep(self.delay)
            self.made[-1] += 1
            yield f"word{i}. " if i % 4 == 3 else f"word{i} "

    def generate(self, audio, prompt, options):
        from speechllm.speechlm import Generation

        return [Generation((), "what is the weather", 0.0)]


class LongToneVoice:
    """One ``seconds`` tone per piece of text: an answer that takes a while to play."""

    sample_rate = 16_000
    seconds = 1.0

    def stream(self, text):
        t = np.arange(int(self.seconds * self.sample_rate)) / self.sample_rate
        yield (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def test_stop_ends_generation_and_speech_at_once():
    model = SlowModel(words=200, delay=0.002)
    stop = threading.Event()
    events = []
    for event in ChatEngine(model, LongToneVoice()).reply([], text="go on", stop=stop):
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == 10:
            stop.set()
    assert isinstance(events[-1], TurnDone) and events[-1].interrupted
    assert model.made == [11]  # generation stopped after the token in progress
    assert events[-1].answer == "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    done = list(ChatEngine(SlowModel(words=4), LongToneVoice()).reply([], text="go on"))
    assert not done[-1].interrupted and sum(isinstance(e, SpeechChunk) for e in done) == 1


def speech_clips():
    from speechllm.audio import load_audio

    examples = test_chat.os.path.join(os.path.dirname(__file__), "..", "examples")
    return [load_audio(os.path.join(examples, name)) for name in ("weather_awb.flac", "coffee_espeak.flac")]


@needs_silero
def test_live_session_turns_at_48k_and_barge_in_stops_the_answer():
    import soxr

    from speechllm.apps.chat.live import LiveSession

    first, second = speech_clips()
    gap = np.zeros(int(1.2 * SR), np.float32)
    audio = soxr.resample(np.concatenate([gap, first, gap, second, gap]), SR, 48_000)
    pcm = (audio * 32767).astype(np.int16)  # what the browser sends: 48 kHz int16
    session = LiveSession(TurnOptions(end_ms=500))
    seen, stopped = [], None
    for i in range(0, len(pcm), 4800):  # 100 ms pieces
        for event in session.hear(48_000, pcm[i:i + 4800]):
            seen.append(type(event))
            if isinstance(event, TurnEnded):
                turn = session.take_turn()
                assert turn is event and session.take_turn() is None
                assert abs(len(turn.audio) / SR - (turn.end - turn.start + 0.7)) < 0.1
                if stopped is None:  # the first answer starts; the user speaks again while it runs
                    stopped = session.begin_answer()
    assert seen == [SpeechStarted, TurnEnded, BargeIn, TurnEnded] and stopped.is_set()
    assert session.onsets == 2 and session.turns == 2
    with pytest.raises(ValueError, match="3 Hz is not a sample rate"):
        session.hear(3, pcm[:100])
    with pytest.raises(ValueError, match="a piece of 6.0 s is over the limit of 5 s"):
        session.hear(48_000, pcm[:6 * 48_000])


def test_a_paused_turn_is_heard_ahead_on_its_own_thread():
    """At a pause the session hands the turn so far to ``prehear`` (a thread: the microphone's pieces go
    on); the turn that ends there carries the same samples, so the model finds them heard."""
    from test_chat_turns import ScriptedVAD, frames

    from speechllm.apps.chat.live import LiveSession
    from speechllm.apps.chat.turns import TurnDetector

    options = TurnOptions(onset_ms=64, end_ms=160, pre_roll_ms=0, min_speech_ms=96, pause_ms=64)
    heard, done = [], threading.Event()
    session = LiveSession(options, TurnDetector(ScriptedVAD(), options),
                          prehear=lambda audio: (heard.append(audio), done.set()))
    events = session.hear(SR, frames("..ssss......"))
    assert [type(e) for e in events] == [SpeechStarted, TurnPaused, TurnEnded]
    assert done.wait(5) and np.array_equal(heard[0], session.take_turn().audio)
    failing = LiveSession(options, TurnDetector(ScriptedVAD(), options), prehear=lambda audio: 1 / 0)
    assert TurnEnded in [type(e) for e in failing.hear(SR, frames("..ssss......"))]  # only time is lost


def test_a_recording_is_heard_while_the_user_gets_to_send(tmp_path):
    """Push to send: a recording made or uploaded goes to the model's ``prehear`` at once, as the turn
    will load it; one over the turn's limit, a broken file or none, quietly not (Send reports them)."""
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'speechllm[chat]')")
    from speechllm.apps.chat.ui import ChatApp
    from speechllm.audio import load_audio

    class Hearing(SlowModel):
        def __init__(self):
            super().__init__(words=2, delay=0.0)
            self.heard = []

        def prehear(self, clip):
            self.heard.append(clip)

    model = Hearing()
    app = ChatApp("speechllm-starter", voice="none", loaded_model=model, options=ChatOptions(max_seconds=2))
    short, long, broken = tmp_path / "short.wav", tmp_path / "long.wav", tmp_path / "broken.wav"
    soundfile.write(short, 0.1 * np.ones(8000, np.float32), SR)
    soundfile.write(long, np.zeros(3 * SR, np.float32), SR)
    broken.write_bytes(b"RIFF....")
    for path in (str(short), str(long), str(broken), None, ""):
        app.prehear_recording(path)
    assert len(model.heard) == 1 and np.array_equal(model.heard[0], load_audio(short))


def test_the_answer_stops_when_the_page_has_played_it():
    from speechllm.apps.chat.live import LiveSession

    session = LiveSession(TurnOptions())
    stop = session.begin_answer()
    session.playing(0.3)
    session.end_answer(stop)
    assert session.detector is not None  # made on first use
    session.hear(16_000, np.zeros(512, np.float32))
    assert session.detector.answering  # still playing in the page
    time.sleep(0.35)
    session.hear(16_000, np.zeros(512, np.float32))
    assert not session.detector.answering and not stop.is_set()
    assert session.begin_answer() is not session.begin_answer()  # a new answer stops the one before
    assert session.stop_answer() and not session.stop_answer()


# ---------------------------------------------------------------- a real browser, a fake microphone

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ESPEAK = shutil.which("espeak-ng")
MIC_RATE = 48_000
SAYINGS = ["What will the weather be like today?", "And what about tomorrow morning?",
           "Tell me something about the sea."]
# seconds: silence before turn 1, after turn 1 (its answer plays out), after turn 2 (turn 3 interrupts).
# GAP_2 leaves room for the end-of-turn wait (500 ms + VAD) and the first answer audio (~1.7 s in CI),
# and ends while the second answer (~3 s of speech) is still sounding.
LEAD, GAP_1, GAP_2, TAIL = 1.0, 6.5, 3.0, 3.0

# Runs before the page's own scripts: every microphone stream the page opens is tapped, and where its
# speech starts and ends is logged on the page clock: sample positions on the audio clock, mapped to
# performance.now() by the context's own timestamp (so a late callback does not shift them). A 5 ms
# block over -40 dBFS is speech; 150 ms under it ends it.
MIC_TAP = """
window.micLogs = [];
const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await original(constraints);
  if (constraints && constraints.audio) {
    const log = [];
    window.micLogs.push(log);
    const ctx = new AudioContext();
    const source = ctx.createMediaStreamSource(stream);
    const tap = ctx.createScriptProcessor(256, 1, 1);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    let speaking = false, lastLoud = 0;
    tap.onaudioprocess = (e) => {
      const x = e.inputBuffer.getChannelData(0), rate = ctx.sampleRate, clock = ctx.getOutputTimestamp();
      const page = (i) => clock.performanceTime + (e.playbackTime + i / rate - clock.contextTime) * 1000;
      for (let i = 0; i < x.length; i++) {
        if (Math.abs(x[i]) <= 0.01) continue;
        if (!speaking) { speaking = true; log.push({type: "on", at: page(i)}); }
        lastLoud = page(i);
      }
      if (speaking && page(x.length) - lastLoud > 150) {
        speaking = false; log.push({type: "off", at: lastLoud});
      }
    };
    source.connect(tap); tap.connect(mute); mute.connect(ctx.destination);
  }
  return stream;
};
"""


def say(text: str, folder) -> np.ndarray:
    import soxr

    path = folder / f"say-{abs(hash(text))}.wav"
    subprocess.run([ESPEAK, "-v", "en-us", "-s", "165", "-w", str(path), text], check=True, timeout=30)
    audio, rate = soundfile.read(path, dtype="float32")
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[voiced[0]:voiced[-1] + 1]  # exact speech edges: the timeline is known to the sample
    return 0.6 * soxr.resample(audio, rate, MIC_RATE) / np.abs(audio).max()


@pytest.fixture(scope="module")
def microphone_file(tmp_path_factory):
    if ESPEAK is None:
        pytest.skip("espeak-ng not installed (make debian, as root)")
    folder = tmp_path_factory.mktemp("fake-mic")
    a, b, c = (say(text, folder) for text in SAYINGS)
    silence = [np.zeros(int(s * MIC_RATE), np.float32) for s in (LEAD, GAP_1, GAP_2, TAIL)]
    audio = np.concatenate([silence[0], a, silence[1], b, silence[2], c, silence[3]])
    path = folder / "conversation.wav"
    soundfile.write(path, audio, MIC_RATE, subtype="PCM_16")
    return path, [len(x) / MIC_RATE for x in (a, b, c)]


@pytest.fixture(scope="module")
def handsfree_server(tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'speechllm[chat]')")
    from speechllm.apps.chat.ui import ChatApp, ServerOptions, launch

    LongToneVoice.seconds = 0.3
    register_voice("test-long-tone", LongToneVoice)
    model = SlowModel(words=40, delay=0.08)  # 3.2 s of writing, 10 sentences: 3 s of speech
    app = ChatApp("speechllm-starter", voice="test-long-tone", loaded_model=model,  # the stand-in answers
                  options=ChatOptions(max_new_tokens=16, max_seconds=10),
                  turn_options=TurnOptions(end_ms=500))
    server, url = launch(app, ServerOptions(temp_dir=str(tmp_path_factory.mktemp("handsfree"))), block=False,
                         quiet=True)
    yield app, url
    server.close()



def speech_spans(log, bridge_ms=400):
    """(start, end) of each stretch of microphone speech, pauses between words bridged."""
    spans = []
    for entry in log:
        if entry["type"] == "on":
            if spans and spans[-1][1] is not None and entry["at"] - spans[-1][1] < bridge_ms:
                spans[-1][1] = None  # the same utterance goes on
            else:
                spans.append([entry["at"], None])
        elif spans and spans[-1][1] is None:
            spans[-1][1] = entry["at"]
    return [tuple(span) for span in spans]


def starved() -> str | None:
    """Why real-time audio cannot be judged here now (the machine's CPUs are oversubscribed), or None.
    SPEECHLLM_REALTIME_TESTS=1 runs the test anyway."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 1.5 * cores and os.environ.get("SPEECHLLM_REALTIME_TESTS") != "1":
        return (f"real-time audio test: load average {load:.1f} on {cores} cores starves the browser's fake "
                "microphone and the page (SPEECHLLM_REALTIME_TESTS=1 runs it anyway)")
    return None


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian chromium + chromium-driver not installed (make debian, as root)")
@needs_silero
def test_browser_hands_free_two_turns_then_barge_in(handsfree_server, microphone_file, tmp_path, monkeypatch):
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    if why := starved():
        pytest.skip(why)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    try:  # real-time audio in a shared CI machine: one hiccup (about 1 run in 15 here) gets a second try
        hands_free_conversation(handsfree_server, microphone_file, tmp_path / "first", monkeypatch)
    except AssertionError as first:
        if os.environ.get("SPEECHLLM_HANDSFREE_LOG"):  # benchmarks/chat_browser.py counts every failure
            raise
        print(f"first try failed ({str(first).splitlines()[0]}); trying once more")
        hands_free_conversation(handsfree_server, microphone_file, tmp_path / "second", monkeypatch)


def hands_free_conversation(handsfree_server, microphone_file, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from speechllm.apps.chat.live import LiveSession

    app, url = handsfree_server
    wav, said = microphone_file
    app.model.made.clear()  # answers of this conversation only
    heard = []  # (wall time, event) as the server's turn detector gave them
    hear = LiveSession.hear
    monkeypatch.setattr(LiveSession, "hear", lambda self, rate, samples: [
        heard.append((time.time(), e)) or e for e in hear(self, rate, samples)])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": MIC_TAP})
        wait = WebDriverWait(driver, 45, poll_frequency=0.05)
        driver.get(url)
        record = "#live-in button.record-button"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, record))
        driver.find_element(By.CSS_SELECTOR, record).click()  # the microphone goes on, once; no more clicks
        page = ("return {player: window.speechllmPlayer.state(), mic: window.micLogs.at(-1) || [],"
                " origin: performance.timeOrigin}")
        # two turns answered, the third interrupts the second answer and is answered in turn
        try:
            state = wait.until(lambda d: "3" in (s := d.execute_script(page))["player"]["starts"] and s)
        except TimeoutException:
            text = driver.find_element(By.ID, "conversation").text
            raise AssertionError(f"no third answer: {driver.execute_script(page)}, server heard {heard}, "
                                 f"conversation {text!r}") from None
        rows = driver.find_elements(By.CSS_SELECTOR, "#conversation .message-row")
        conversation = driver.find_element(By.ID, "conversation").text
    finally:
        driver.quit()
    player, spans = state["player"], speech_spans(state["mic"])
    edges = [(at, kind) for span in spans for at, kind in zip(span, ("mic on", "mic off"), strict=True)
             if at is not None]  # the last stretch may still be going on
    timeline = sorted(edges
                      + [(1000 * t - state["origin"], type(e).__name__) for t, e in heard]
                      + [(at, f"answer {turn} sounds") for turn, at in player["starts"].items()]
                      + [(stop["at"], f"answer {stop['turn']} stopped") for stop in player["stops"]])
    print("\n".join(f"{at:9.0f} ms  {what}" for at, what in timeline))
    assert len(spans) >= 3 and all(end is not None for _, end in spans[:3]), spans
    onsets = [start for start, _ in spans[:3]]  # the microphone played the file's turns, in time
    late = "the fake microphone did not play the file in real time (a starved machine?)"
    assert abs(onsets[1] - onsets[0] - 1000 * (said[0] + GAP_1)) < 150, (late, spans, said)
    assert abs(onsets[2] - onsets[1] - 1000 * (said[1] + GAP_2)) < 150, (late, spans, said)
    starts = {int(turn): at for turn, at in player["starts"].items()}
    assert {1, 2, 3} <= set(starts), f"answers that sounded: {sorted(starts)} (wanted 1, 2 and 3)"
    # turns 1 and 2: the answer starts after the user stops speaking, with no button pressed
    waits = [starts[n] - spans[n - 1][1] for n in (1, 2)]
    assert all(0 < w < 5000 for w in waits), waits
    assert starts[2] < spans[2][0], "the second answer was not playing yet when the third turn began"
    stops = [s for s in player["stops"] if s["reason"] == "onset"]
    assert [s["turn"] for s in stops] == ["2"], stops  # the third turn's first words stopped it
    stop = stops[0]
    barge_in_ms = stop["at"] - spans[2][0]
    detected = [t for t, e in heard if isinstance(e, BargeIn)]
    vad_ms = 1000 * detected[0] - state["origin"] - spans[2][0]
    print(f"\nhands-free: end of speech -> first answer audio {waits[0]:.0f} ms, {waits[1]:.0f} ms "
          f"(turn 3: {starts[3] - spans[2][1]:.0f} ms); speech onset -> answer audio stopped "
          f"{barge_in_ms:.0f} ms (the server's VAD had it after {vad_ms:.0f} ms)")
    if log := os.environ.get("SPEECHLLM_HANDSFREE_LOG"):  # benchmarks/chat_browser.py collects runs
        import json

        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"end_of_speech_to_audio_ms": [waits[0], waits[1], starts[3] - spans[2][1]],
                                "barge_in_ms": barge_in_ms, "vad_onset_ms": vad_ms,
                                "load_average": os.getloadavg()[0]}) + "\n")
    assert 0 < barge_in_ms < 300, barge_in_ms
    events = [e for _, e in heard]
    assert [type(e) for e in events if not isinstance(e, TurnPaused)][:6] == [
        SpeechStarted, TurnEnded, SpeechStarted, TurnEnded, BargeIn, TurnEnded]
    for i, e in enumerate(events):  # each turn went ahead at its pause with the samples it ended with
        if isinstance(e, TurnEnded):
            assert isinstance(events[i - 1], TurnPaused) and np.array_equal(events[i - 1].audio, e.audio)
    assert app.model.made[1] < app.model.words  # the second answer's generation was stopped too
    assert len(rows) >= 6 and "(interrupted)" in conversation
