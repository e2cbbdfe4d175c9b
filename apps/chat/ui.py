"""The Gradio page of ``speechllm chat``: talk hands-free, record or upload, or type; the answer streams
as text and speech.

Hands-free: the page streams its microphone (Gradio's streaming Audio, ~100 ms pieces) to the tab's
:class:`~speechllm.apps.chat.live.LiveSession`, where Silero VAD finds the turns
(:mod:`.turns`): when the user stops speaking the answer starts, no button; when the user speaks
while an answer is generated or playing, the page stops its audio at once and the server stops the
generation (barge-in). The Stop button does the same. The conversation keeps each spoken turn and
each spoken answer as audio beside its text.

Speech reaches the browser as it is made: each chunk is appended (base64 16-bit PCM) to a hidden
text box, which Gradio streams as diffs, and a small Web Audio player in the page schedules each
new chunk right after the previous one. No ffmpeg, no media server. When the turn is over the
whole answer also lands in an ordinary audio player, to replay or download.

Exposure: binds 127.0.0.1 unless told otherwise; uploads are capped in size (``max_file_size``),
spoken turns in length and typed ones in characters, both before any model work; files are served
only from the app's own temporary folder (Gradio serves its upload/cache folder and
``allowed_paths``, which stays empty; the folder is a fresh private one (0700), so it holds nothing
but this app's uploads and answers, and it is removed when the server stops). A client picks the
model and the voice only among those the operator offered at start (:class:`ChatApp`), by name;
what it is told never holds a host path (``ChatApp.public_message``).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from speechllm.apps.chat.engine import (
    QUANT_CHOICES,
    ChatEngine,
    ChatOptions,
    Notice,
    SpeechChunk,
    TextDelta,
    Turn,
    TurnDone,
    chat_quant,
    check_message,
    load_chat_model,
)
from speechllm.apps.chat.exposure import AllowList, NotOffered, PrivateTempDir, scrub_paths
from speechllm.apps.chat.live import LiveSession, LiveSessions
from speechllm.apps.chat.turns import SAMPLE_RATE, BargeIn, SpeechStarted, TurnEnded, TurnOptions
from speechllm.apps.chat.voices import VOICES, Voice, VoiceError, default_voice, load_voice
from speechllm.limits import MAX_PROMPT_CHARS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int | None = None  # None: Gradio picks a free one from 7860 up
    max_upload_mb: float = 20.0
    temp_dir: str | None = None  # where the server's private folder is made (None: the system's temp)


PLAYER_HEAD = """<script>
// Web Audio player for the streamed answer. The hidden box holds "TURN RATE CHUNK CHUNK ...":
// every chunk is base64 little-endian int16 PCM; chunks of the same turn are played back to back.
// stop() silences what is scheduled (barge-in, Stop) and mutes the rest of that turn's chunks.
// starts[turn] / stops[] are page times (performance.now()) of each turn's first sound and each stop.
window.speechllmPlayer = (() => {
  let ctx = null, next = 0, turn = null, done = 0, played = 0, seconds = 0, muted = null, sources = [];
  const starts = {}, stops = [];
  function context() {
    if (!ctx) ctx = new (window.AudioContext || window.webkitAudioContext)();
    if (ctx.state === "suspended") ctx.resume();
    return ctx;
  }
  function play(b64, rate) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    const c = context();
    const buffer = c.createBuffer(1, pcm.length, rate);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
    const source = c.createBufferSource();
    source.buffer = buffer;
    source.connect(c.destination);
    const start = Math.max(c.currentTime + 0.05, next);
    source.start(start);
    if (!(turn in starts)) starts[turn] = performance.now() + (start - c.currentTime) * 1000;
    sources.push(source);
    source.onended = () => { sources = sources.filter((s) => s !== source); };
    next = start + buffer.duration;
    played += 1;
    seconds += buffer.duration;
  }
  function stop(reason) {
    const busy = sources.length > 0;
    for (const s of sources) { try { s.stop(); } catch (e) { /* already ended */ } }
    sources = []; next = 0; muted = turn;
    if (busy) stops.push({turn, reason, at: performance.now()});
    return busy;
  }
  return {
    unlock() { context(); },
    update(value) {
      if (!value) return;
      const parts = value.trim().split(" ");
      if (parts.length < 2) return;
      if (parts[0] !== turn) { turn = parts[0]; done = 0; }
      const rate = Number(parts[1]), chunks = parts.slice(2);
      if (turn === muted) { done = chunks.length; return; }
      for (; done < chunks.length; done++) play(chunks[done], rate);
    },
    stop,
    state() {
      return {turn, played, seconds, context: ctx && ctx.state, playing: sources.length, starts, stops};
    },
  };
})();
</script>"""


def pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")


def encode_chunk(samples: np.ndarray) -> str:
    return base64.b64encode(pcm16(samples).tobytes()).decode("ascii")


def save_turn_audio(samples: np.ndarray, rate: int) -> str:
    """A turn's audio as a wav in the server's own temporary folder, for the conversation's history."""
    import soundfile

    folder = os.path.join(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir(), "turns")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    handle, path = tempfile.mkstemp(suffix=".wav", dir=folder)
    with os.fdopen(handle, "wb") as f:
        soundfile.write(f, pcm16(samples), rate, format="WAV", subtype="PCM_16")
    return path


class ChatApp:
    """The loaded model and voices behind the page (one shared model; one turn at a time).

    What a client may pick is fixed here, when the server starts: the models are the zoo's speech-LLMs
    and those the operator passed (``model`` and ``models``), the voices the registry's and those the
    operator passed (``voice`` and ``voices``). Host folders are offered by name, never by path."""

    def __init__(self, model: str, quant: str = "auto", voice: str | None = None,
                 device: str | None = None, options: ChatOptions | None = None, loaded_model: Any = None,
                 models: Sequence[str] = (), voices: Sequence[str] = (),
                 turn_options: TurnOptions | None = None):
        from speechllm.zoo import ZOO

        self.options, self.device = options or ChatOptions(), device
        turn_options = turn_options or TurnOptions()  # a hands-free turn ends at the chat's max_seconds
        turn_options = replace(turn_options,
                               max_seconds=min(turn_options.max_seconds, self.options.max_seconds),
                               pause_ms=turn_options.pause_ms or turn_options.end_ms / 2)  # heard ahead
        # hands-free state, per browser tab
        self.live = LiveSessions(lambda: LiveSession(turn_options, prehear=self.prehear))
        self.models = AllowList.build("model", [model, *models],
                                      [e.name for e in ZOO.values() if e.kind == "speech-llm" and e.chat])
        voice = voice or default_voice()
        self.voices = AllowList.build("voice", [voice, *voices], offered_voice_names())
        quant = chat_quant(quant)
        self.public_model, self.quant = self.models.public(model), quant
        self.default_voice = self.voices.public(voice)
        self.model = loaded_model if loaded_model is not None else load_chat_model(model, quant, device)
        self._voices: dict[str, Voice | None] = {self.default_voice: load_voice(voice)}  # fail at start
        self._known_paths = {**self.models.path_names(), **self.voices.path_names()}
        self._lock = threading.Lock()
        self._turns = itertools.count(1)

    def prehear(self, audio) -> None:
        """Hear a hands-free turn at its first pause, before its end is certain (the model remembers it)."""
        hear = getattr(self.model, "prehear", None)
        if hear is not None:
            hear(audio)

    def prehear_recording(self, path: str | None) -> None:
        """A recording just made or uploaded, heard while the user gets to Send (the model remembers
        it). A turn's limits apply; a recording they refuse is reported when it is sent."""
        if not path:
            return
        try:
            self.prehear(ChatEngine(self.model, None, self.options).load_turn_audio(path))
        except Exception:  # hearing ahead only saves time
            pass

    def load_model(self, name: str, quant: str) -> str:
        """Switch the shared model, for everyone, to one offered by name (see :class:`AllowList`)."""
        source = self.models.source(name)
        quant = chat_quant(quant)
        with self._lock:
            self.model = load_chat_model(source, quant, self.device)
            self.public_model, self.quant = name, quant
        return f"loaded {name} ({quant})"

    def voice(self, name: str) -> Voice | None:
        """A voice offered by name, loaded once."""
        source = self.voices.source(name)
        with self._lock:
            if name not in self._voices:
                self._voices[name] = load_voice(source)
            return self._voices[name]

    def engine(self, voice: str, max_new_tokens: int) -> ChatEngine:
        options = replace(self.options, max_new_tokens=int(max_new_tokens))
        return ChatEngine(self.model, self.voice(voice), options)

    def next_turn(self) -> int:
        return next(self._turns)

    def public_message(self, text: str) -> str:
        """Text fit for a client: the operator's folders by name, other host paths as ``<path>``."""
        return scrub_paths(text, self._known_paths)


def offered_voice_names() -> list[str]:
    """The chat's registry voices and the project TTS voices installed here."""
    import speechllm.tts as tts

    own = [name for name in getattr(tts, "VOICES", {})
           if name in VOICES or getattr(tts, "is_installed", lambda name: False)(name)]
    return [*VOICES, *own]


def _messages(turns: list[dict]) -> list[dict]:
    """The conversation as shown: each turn's text, and its audio (a spoken turn, a spoken answer)."""
    return [{"role": t["role"], "content": [t["text"], {"path": t["audio"]}] if t.get("audio") else t["text"]}
            for t in turns]


def build_blocks(app: ChatApp):
    """The Blocks page; ``launch`` serves it. What a client is told goes through ``app.public_message``."""
    import gradio as gr

    def refusal(exc: Exception, what: str = "") -> gr.Error:
        if not isinstance(exc, (ValueError, FileNotFoundError, VoiceError)):  # not the client's doing
            log.error("chat: %s", exc, exc_info=exc)
            what = what or "the answer failed: "
        return gr.Error(app.public_message(f"{what}{exc}"))

    def answer(session, audio, audio_file, text, turns, voice_name, max_new_tokens):
        """One turn, pushed or hands-free: yields (conversation, speech stream, spoken answer, history,
        recording, typed text) updates. The session's stop flag (barge-in, Stop) ends it early."""
        turns = list(turns or [])
        try:
            text = check_message(text)  # a long message is refused before anything else
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        if audio is None and not text:
            raise gr.Error("Record or upload a question, or type one.")
        try:
            engine = app.engine(voice_name, max_new_tokens)
        except NotOffered as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise refusal(exc, f"voice {voice_name!r}: ") from None
        spoken_user = audio is not None
        shown_user = (f"🎤 {text}" if text else "🎤 (speaking…)") if spoken_user else text
        messages = _messages(turns) + [{"role": "user", "content": shown_user},
                                       {"role": "assistant", "content": ""}]
        rate = engine.voice.sample_rate if engine.voice is not None else 0
        stream = f"{app.next_turn()} {rate}"
        chunks: list[np.ndarray] = []
        text_answer, done = "", None
        stop = session.begin_answer()
        yield messages, stream, None, gr.skip(), gr.skip(), gr.skip()  # the turn shows at once
        try:
            for event in engine.reply([Turn(t["role"], t["text"]) for t in turns], audio=audio, text=text,
                                      stop=stop):
                if isinstance(event, TextDelta):
                    text_answer += event.text
                    messages[-1] = {"role": "assistant", "content": text_answer}
                    yield messages, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, SpeechChunk):
                    chunks.append(event.samples)
                    session.playing(len(event.samples) / event.sample_rate)
                    stream += " " + encode_chunk(event.samples)
                    yield gr.skip(), stream, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, Notice):
                    gr.Warning(app.public_message(event.message))
                elif isinstance(event, TurnDone):
                    done = event
        except Exception as exc:  # AudioError (too long, unreadable) is a ValueError
            raise refusal(exc) from None
        finally:
            session.end_answer(stop)
        spoken = (rate, pcm16(np.concatenate(chunks))) if chunks else None
        answer_text = done.answer + (" … (interrupted)" if done.interrupted else "")
        turns += [{"role": "user", "text": done.user, "audio": audio_file},
                  {"role": "assistant", "text": answer_text,
                   "audio": save_turn_audio(np.concatenate(chunks), rate) if chunks else None}]
        messages = _messages(turns)
        if spoken_user:
            messages[-2] = {**messages[-2], "content": [f"🎤 {done.user}", *messages[-2]["content"][1:]]}
        yield messages, stream, spoken, turns, None, ""

    def respond(audio_path, text, turns, voice_name, max_new_tokens, request):
        session = app.live.get(request.session_hash)
        yield from answer(session, audio_path or None, audio_path or None, text, turns, voice_name,
                          max_new_tokens)

    def listen(piece, request):
        """A piece of the hands-free microphone: a new onset stops the page's player (barge-in), a
        finished turn asks for its answer."""
        if piece is None:
            return gr.skip(), gr.skip()
        session = app.live.get(request.session_hash)
        try:
            events = session.hear(*piece)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        heard = any(isinstance(e, (SpeechStarted, BargeIn)) for e in events)
        onset = str(session.onsets) if heard else gr.skip()
        ready = str(session.turns) if any(isinstance(e, TurnEnded) for e in events) else gr.skip()
        return onset, ready

    def respond_live(ready, turns, voice_name, max_new_tokens, request):
        """The answer to the hands-free turn that just ended."""
        session = app.live.get(request.session_hash)
        turn = session.take_turn()
        if turn is None:  # answered already (or none yet)
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        audio_file = save_turn_audio(turn.audio, SAMPLE_RATE)
        for update in answer(session, turn.audio, audio_file, "", turns, voice_name, max_new_tokens):
            yield update[:4]

    def stop_answer(request):
        session = app.live.find(request.session_hash)
        if session is not None:
            session.stop_answer()

    for fn in (respond, listen, respond_live, stop_answer):  # Gradio passes the request (its session) by
        fn.__annotations__ = {"request": gr.Request}  # type, and this module's annotations are strings

    def load(model_name, quant):
        try:
            return app.load_model(model_name, quant)
        except NotOffered as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise refusal(exc, f"model {model_name!r}: ") from None

    with gr.Blocks(title="speechllm chat", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        turns = gr.State([])
        gr.Markdown("### speechllm voice chat\nTalk hands-free (start the microphone once: a pause ends your "
                    "turn, speaking over the answer stops it), or record, upload or type and press Send. "
                    "The model hears the recording and answers it; the answer is spoken as it is written.")
        chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="conversation")
        with gr.Row():
            live_in = gr.Audio(sources=["microphone"], streaming=True, type="numpy", elem_id="live-in",
                               label="Hands-free (a pause sends; talking over the answer stops it)",
                               waveform_options=gr.WaveformOptions(show_recording_waveform=False))
            audio_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Your turn (speech)",
                                elem_id="speech-in")
            text_in = gr.Textbox(label="…or type (with a recording: an instruction about it)", lines=3,
                                 max_length=MAX_PROMPT_CHARS, elem_id="text-in")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            clear = gr.Button("New conversation", elem_id="clear")
        answer_audio = gr.Audio(label="Spoken answer (whole turn)", type="numpy", interactive=False,
                                elem_id="answer-audio")
        stream_box = gr.Textbox(visible="hidden", elem_id="speech-stream")
        onset_box = gr.Textbox(visible="hidden", elem_id="speech-onset")  # changes at each onset heard
        ready_box = gr.Textbox(visible="hidden", elem_id="turn-ready")  # changes at each hands-free turn
        with gr.Accordion("Settings", open=False):
            voice = gr.Dropdown(app.voices.names(), value=app.default_voice, label="Voice",
                                allow_custom_value=False)
            max_new_tokens = gr.Slider(16, 512, value=app.options.max_new_tokens, step=8,
                                       label="Longest answer (tokens)")
            model_name = gr.Dropdown(app.models.names(), value=app.public_model, allow_custom_value=False,
                                     label="Model (the server's choices; switches it for everyone)")
            # offers the one spelling; an API client's older one ("saved") is checked by load_model
            quant = gr.Dropdown(list(QUANT_CHOICES), value=app.quant, label="LLM weights",
                                allow_custom_value=True)
            load_button = gr.Button("Load model")
            status = gr.Markdown(f"model: {app.public_model} ({app.quant})")

        unlock = "() => { window.speechllmPlayer && window.speechllmPlayer.unlock(); }"
        send.click(fn=None, js=unlock)
        live_in.start_recording(fn=None, js=unlock)
        inputs = [audio_in, text_in, turns, voice, max_new_tokens]
        outputs = [chatbot, stream_box, answer_audio, turns, audio_in, text_in]
        model_slot = {"concurrency_id": "model", "concurrency_limit": 1}  # one answer at a time on the model
        send.click(respond, inputs, outputs, api_name="respond", **model_slot)
        for event in (audio_in.stop_recording, audio_in.upload):  # heard while the user gets to Send
            event(app.prehear_recording, audio_in, None, concurrency_limit=None, api_visibility="private",
                  show_progress="hidden")
        text_in.submit(respond, inputs, outputs, api_visibility="private", **model_slot)
        live_in.stream(listen, live_in, [onset_box, ready_box], stream_every=0.1, concurrency_limit=None,
                       api_visibility="private", show_progress="hidden")
        onset_box.change(fn=None, inputs=onset_box,
                         js="(v) => { window.speechllmPlayer && window.speechllmPlayer.stop('onset'); }")
        ready_box.change(respond_live, [ready_box, turns, voice, max_new_tokens], outputs[:4],
                         api_visibility="private", **model_slot)
        stop_button.click(stop_answer, None, None, concurrency_limit=None, api_visibility="private",
                          js="() => { window.speechllmPlayer && window.speechllmPlayer.stop('button'); }")
        stream_box.change(fn=None, inputs=stream_box,
                          js="(v) => { window.speechllmPlayer && window.speechllmPlayer.update(v); }")
        clear.click(lambda: ([], [], None, ""), None, [chatbot, turns, answer_audio, stream_box],
                    api_name="clear")
        load_button.click(load, [model_name, quant], status, api_name="load_model")
    return demo


class ChatServer:
    """A running chat server and its private temporary folder; :meth:`close` stops the one and
    removes the other (also done at exit)."""

    def __init__(self, temp: PrivateTempDir, temp_env_before: str | None):
        self.temp, self.demo, self._env_before = temp, None, temp_env_before

    @property
    def temp_dir(self) -> str:
        return self.temp.path

    def close(self) -> None:
        if self.demo is not None:
            self.demo.close(verbose=False)
        if os.environ.get("GRADIO_TEMP_DIR") == self.temp.path:  # give another server in this process its own
            if self._env_before is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._env_before
        self.temp.remove()


def launch(app: ChatApp, server: ServerOptions = ServerOptions(), block: bool = True,
           quiet: bool = False) -> tuple[ChatServer, str]:
    """Serve the page until interrupted; with ``block=False`` return ``(server, url)`` at once and keep
    serving in the background until ``server.close()``. Either way, Gradio's uploads and answers live in
    one private folder that is removed when the server stops."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    # Gradio's queue rebuilds a pandas table of its last 10,000 events after every event, for a monitoring
    # page this server does not offer; at ten microphone pieces a second that work outgrows the pieces
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**9))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
    running = ChatServer(PrivateTempDir(server.temp_dir), os.environ.get("GRADIO_TEMP_DIR"))
    os.environ["GRADIO_TEMP_DIR"] = running.temp_dir  # Gradio reads it for every upload and cached output
    try:
        import gradio as gr

        running.demo = demo = build_blocks(app)
        demo.queue(default_concurrency_limit=1)
        _, url, _ = demo.launch(
            server_name=server.host, server_port=server.port, share=False, prevent_thread_lock=not block,
            max_file_size=f"{server.max_upload_mb:g}mb", allowed_paths=[], ssr_mode=False, mcp_server=False,
            pwa=False, enable_monitoring=False, show_error=False, quiet=quiet, head=PLAYER_HEAD,
            theme=gr.themes.Default())
    except BaseException:
        running.close()
        raise
    if block:  # launch returned: the server was stopped (Ctrl-C)
        running.close()
    return running, url
