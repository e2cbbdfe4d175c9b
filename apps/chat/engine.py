"""The voice chat without the web page: a spoken or typed turn in, streamed text and speech out.

The speech-LLM hears the recording and answers it (the model decides how: the starter's Whisper
hears, and its LLM answers a recording alone as a typed message, see ``spoken_questions``). As its
tokens arrive, :class:`SentenceChunker` cuts the text at sentence and clause ends
and a :class:`SpeechWorker` thread speaks each piece while the LLM keeps writing, so text and
audio chunks come out interleaved: :meth:`ChatEngine.reply` yields :class:`TextDelta`,
:class:`SpeechChunk`, :class:`Notice` and, last, :class:`TurnDone`.

History is kept as text turns and put in front of the instruction (the model's prompt has one
user turn). A spoken turn enters the history as its transcript, made by the same model after
the answer (``ChatOptions.remember_speech``) while the last sentences are still being spoken.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechllm.apps.chat.voices import Voice
from speechllm.apps.commands.weights import OLD_VALUES, WEIGHT_FORMATS

QUANT_CHOICES = WEIGHT_FORMATS  # auto: whatever the model folder's config.json says
MAX_TURN_SECONDS = 120.0  # the longest spoken turn any chat accepts (--max-seconds stays under it)


@dataclass(frozen=True)
class ChatOptions:
    max_new_tokens: int = 200
    max_seconds: float = 30.0  # longest spoken turn accepted, at most MAX_TURN_SECONDS
    history_chars: int = 2000  # most recent history kept in the prompt
    remember_speech: bool = True  # transcribe spoken turns for the history (one more model pass)

    def __post_init__(self):
        if not 0 < self.max_seconds <= MAX_TURN_SECONDS:
            raise ValueError(f"max_seconds is {self.max_seconds:g}: it must be above 0 and at most "
                             f"{MAX_TURN_SECONDS:g} s")


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class SpeechChunk:
    samples: np.ndarray  # float32 mono
    sample_rate: int


@dataclass(frozen=True)
class Notice:
    message: str  # something went wrong on the side (e.g. the voice); the text goes on


@dataclass(frozen=True)
class TurnDone:
    user: str  # what the user said or typed, for the history
    answer: str
    interrupted: bool = False  # stopped (barge-in, Stop): the answer is what was written until then


Event = TextDelta | SpeechChunk | Notice | TurnDone


def chat_quant(quant: str) -> str:
    """``quant`` in the one spelling (:data:`QUANT_CHOICES`); an older one (``saved`` for ``auto``,
    ``none`` for ``fp32``) is still accepted, with a one-line notice on stderr."""
    canonical = OLD_VALUES.get(quant, quant)
    if canonical not in QUANT_CHOICES:
        raise ValueError(f"quantization {quant!r}: choose from {', '.join(QUANT_CHOICES)}")
    if canonical != quant:
        print(f"note: quantization {quant!r} is deprecated; use {canonical!r}", file=sys.stderr)
    return canonical


def load_chat_model(model: str, quant: str = "auto", device: str | None = None):
    """A speech-LLM by model folder or zoo name; ``quant`` re-loads its LLM in another format."""
    from speechllm.device import pick_device
    from speechllm.speechlm import is_speechlm_folder, load_backbone, load_speechlm, read_config
    from speechllm.zoo import resolve

    quant = chat_quant(quant)
    folder = resolve(model).path
    if not is_speechlm_folder(folder):
        raise ValueError(f"{model}: not a speech-LLM model folder (no config.json of format 'speechllm'); "
                         "make one with `speechllm finetune`")
    target = pick_device(device)
    if quant == "auto":
        return load_speechlm(folder, device=target)
    config, _ = read_config(folder)
    llm, tokenizer = load_backbone(config.llm, None if quant == "fp32" else quant)
    return load_speechlm(folder, device=target, llm=llm, tokenizer=tokenizer)


class SentenceChunker:
    """Text pieces in, speakable pieces out: whole sentences, or clauses once long enough.

    The first piece goes out sooner, after ``first_words`` words, so the voice can start while the
    LLM is still on its first sentence (time to first audio is what a listener notices)."""

    _SENTENCE = re.compile(r"[.!?…](?=\s)|\n")
    _CLAUSE = re.compile(r"[,;:](?=\s)")
    _WORD_END = re.compile(r"\S(?=\s)")

    def __init__(self, min_clause_chars: int = 30, max_chars: int = 150, first_words: int | None = 6):
        self.min_clause_chars, self.max_chars, self.first_words = min_clause_chars, max_chars, first_words
        self.buffer = ""
        self.emitted = False

    def push(self, text: str) -> list[str]:
        self.buffer += text
        out = []
        while piece := self._cut():
            out.append(piece)
        return out

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        return [rest] if rest else []

    def _cut(self) -> str | None:
        end = None
        if m := self._SENTENCE.search(self.buffer):
            end = m.end()
        else:
            long_enough = [m.end() for m in self._CLAUSE.finditer(self.buffer)
                           if m.end() >= self.min_clause_chars]
            if long_enough:
                end = long_enough[0]
            elif len(self.buffer) > self.max_chars and " " in self.buffer[: self.max_chars]:
                end = self.buffer.rindex(" ", 0, self.max_chars)
        if end is None and not self.emitted and self.first_words:
            word_ends = [m.end() for m in self._WORD_END.finditer(self.buffer)]
            if len(word_ends) >= self.first_words:
                end = word_ends[self.first_words - 1]
        if end is None:
            return None
        piece, self.buffer = self.buffer[:end].strip(), self.buffer[end:].lstrip()
        self.emitted = self.emitted or bool(piece)
        return piece or self._cut()


class SpeechWorker:
    """Speaks queued text on its own thread; chunks are collected with :meth:`ready` / :meth:`finish`.
    Once ``stop`` is set it speaks nothing more and :meth:`finish` returns at once."""

    def __init__(self, voice: Voice, stop: threading.Event | None = None):
        self.voice, self.stop = voice, stop or threading.Event()
        self.inbox: queue.Queue[str | None] = queue.Queue()
        self.outbox: queue.Queue[np.ndarray | Exception | None] = queue.Queue()
        self.ended = False
        self.thread = threading.Thread(target=self._run, name="speechllm-tts", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        failed = False
        while (text := self.inbox.get()) is not None:
            if failed or self.stop.is_set():
                continue
            try:
                for chunk in self.voice.stream(text):
                    if self.stop.is_set():
                        break
                    if len(chunk):
                        self.outbox.put(np.asarray(chunk, dtype=np.float32))
            except Exception as exc:  # the voice's problem must not end the text answer
                failed = True
                self.outbox.put(exc)
        self.outbox.put(None)

    def say(self, text: str) -> None:
        self.inbox.put(text)

    def _events(self, block: bool) -> Iterator[Event]:
        while not self.stop.is_set():
            try:
                item = self.outbox.get(block=block, timeout=0.05 if block else None)
            except queue.Empty:
                if block:
                    continue
                return
            if item is None:
                return
            if isinstance(item, Exception):
                yield Notice(f"the voice failed: {item}")
            else:
                yield SpeechChunk(item, self.voice.sample_rate)

    def ready(self) -> Iterator[Event]:
        """Chunks made so far, without waiting."""
        return self._events(block=False)

    def end(self) -> None:
        """No more text: the thread speaks what it has and stops."""
        if not self.ended:
            self.ended = True
            self.inbox.put(None)

    def finish(self) -> Iterator[Event]:
        """All remaining chunks, waiting for the last one."""
        self.end()
        return self._events(block=True)


def with_history(turns: Sequence[Turn], request: str, max_chars: int) -> str:
    """The newest turns that fit in ``max_chars``, then the request."""
    lines: list[str] = []
    used = 0
    for turn in reversed(turns):
        line = f"{'User' if turn.role == 'user' else 'Assistant'}: {turn.text.strip()}"
        if used + len(line) > max_chars:
            break
        lines.insert(0, line)
        used += len(line) + 1
    if not lines:
        return request
    return "Earlier in this conversation:\n" + "\n".join(lines) + "\n\n" + request


def check_message(text: str | None) -> str:
    """Typed text, stripped; a ValueError when it is over ``MAX_PROMPT_CHARS`` (a long prefill would
    hold the one-turn-at-a-time queue for minutes)."""
    from speechllm.limits import check_prompt

    text = (text or "").strip()
    return check_prompt(text, "the message") if text else ""


def turn_request(text: str | None, has_audio: bool) -> str:
    """What the LLM is asked: a recording alone is a spoken question; a typed question with it is
    a question about the recording (the instruction ``speechllm ask FILE QUESTION`` uses); other
    typed text is a free instruction about it (``summarise this``) or, without audio, the message."""
    from speechllm.speechlm import instruction

    if not text:
        return instruction("spoken-question")
    if has_audio and text.rstrip().endswith("?"):
        return instruction("passage-question", text.strip())
    return text


class ChatEngine:
    def __init__(self, model, voice: Voice | None = None, options: ChatOptions = ChatOptions()):
        self.model, self.voice, self.options = model, voice, options

    def load_turn_audio(self, audio: str | Path | np.ndarray) -> np.ndarray:
        """A recording (file or 16 kHz float32 array) checked against the duration limit; a file's
        length is read from its header, before decoding. Errors name "the recording", not the file."""
        from speechllm.audio import SAMPLE_RATE, AudioError, load_audio

        limit = self.options.max_seconds
        if isinstance(audio, np.ndarray):
            clip = np.asarray(audio, dtype=np.float32).reshape(-1)
            if clip.size == 0 or not np.isfinite(clip).all():
                raise AudioError("the recording", "empty or not finite")
            if clip.size > limit * SAMPLE_RATE:
                raise AudioError("the recording", f"{clip.size / SAMPLE_RATE:.1f} s is over the limit of "
                                                  f"{limit:g} s")
            return clip
        try:
            return load_audio(audio, max_duration=limit)
        except AudioError as exc:
            raise AudioError("the recording", exc.reason) from None

    def reply(self, history: Sequence[Turn], audio: str | Path | np.ndarray | None = None,
              text: str | None = None, stop: threading.Event | None = None) -> Iterator[Event]:
        """Answer one turn: speech (optionally with a typed instruction about it) or text alone.

        Typed text over ``MAX_PROMPT_CHARS`` and recordings over ``max_seconds`` are refused before
        any model work. Once ``stop`` is set (barge-in, the Stop button) generation and speech end
        after the current token or chunk, and the turn ends with ``TurnDone(interrupted=True)``."""
        from speechllm.speechlm import GenerationOptions, instruction

        text = check_message(text)
        if audio is None and not text:
            raise ValueError("say or type something first")
        clip = self.load_turn_audio(audio) if audio is not None else None
        request = turn_request(text, clip is not None)
        prompt = with_history(history, request, self.options.history_chars)
        options = GenerationOptions(max_new_tokens=self.options.max_new_tokens)
        stop = stop or threading.Event()
        worker = SpeechWorker(self.voice, stop) if self.voice is not None else None
        chunker = SentenceChunker()
        answer = ""
        pieces = self.model.stream(clip, prompt, options)
        try:
            for piece in pieces:
                if stop.is_set():
                    break
                answer += piece
                yield TextDelta(piece)
                if worker is not None:
                    for sentence in chunker.push(piece):
                        worker.say(sentence)
                    yield from worker.ready()
            if stop.is_set():
                yield TurnDone(text or "(speech)", answer.strip(), interrupted=True)
                return
            if worker is not None:
                for sentence in chunker.flush():
                    worker.say(sentence)
                worker.end()  # speaking goes on while the turn is transcribed
            user = text
            if clip is not None and self.options.remember_speech:
                heard = self.model.generate([clip], instruction("transcribe"), options)[0].text
                user = f"{heard} ({text})" if text else heard
            if worker is not None:
                yield from worker.finish()
            yield TurnDone(user or "(speech)", answer.strip(), interrupted=stop.is_set())
        finally:
            getattr(pieces, "close", lambda: None)()  # the model stops generating now
            if worker is not None:
                worker.end()
