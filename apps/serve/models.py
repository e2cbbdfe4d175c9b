"""What the server serves, fixed at start: speech models (Whisper or speech-LLM) and voices.

Each model is loaded once with ``speechllm.load`` (the transcriber the CLI uses) and gets a
:class:`~speechllm.apps.serve.workers.ModelWorker`. Jobs run through the product paths:
transcription and translation through the transcriber's ``transcribe_many`` (its segmenter, long
audio cut into pieces, segments of many requests decoded as one batch), chat replies through the
speech-LLM's ``generate`` (a batch) or ``stream`` (one reply, token by token).

Public ids: a zoo name as given, a folder by its own name (no host path is shown to clients), or
``ID=SOURCE`` for an id of the operator's choosing (``whisper-1=whisper-tiny.en``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from speechllm.apps.serve.errors import bad_request, queue_full
from speechllm.apps.serve.workers import Delta, Job, ModelWorker, QueueFull
from speechllm.whisper.transcribe import TEMPERATURE_FALLBACK


@dataclass(frozen=True)
class ModelOptions:
    device: str = "auto"
    batch_size: int = 8  # requests (and segments) decoded together
    beam_size: int = 1
    segmenter: str = "auto"
    max_queue: int = 64  # waiting jobs per model before 503


@dataclass(frozen=True)
class SpeechToText:
    """What a transcription or translation asks for; requests asking the same share a batch."""

    task: str = "transcribe"  # or "translate" (into English)
    language: str | None = None  # None: the model's default (detected by a multilingual Whisper)
    prompt: str | None = None  # Whisper's initial prompt
    temperature: float = 0.0
    words: bool = False  # word timestamps


@dataclass(frozen=True)
class TranscribeJob:
    audio: np.ndarray


@dataclass(frozen=True)
class ChatJob:
    audio: np.ndarray | None
    prompt: str
    max_new_tokens: int


def public_id(spec: str) -> tuple[str, str]:
    """``(id, source)`` of a ``--model`` value: ``ID=SOURCE``, a folder (its name), or a name as is."""
    if "=" in spec:
        name, source = spec.split("=", 1)
        if not name.strip() or not source.strip():
            raise ValueError(f"--model {spec!r}: expected ID=SOURCE")
        return name.strip(), source.strip()
    path = Path(spec).expanduser()
    return (path.resolve().name if path.exists() else spec), spec


class ServedModel:
    def __init__(self, model_id: str, transcriber, options: ModelOptions):
        from speechllm.speechlm import SpeechLLMTranscriber

        self.id, self.transcriber, self.options = model_id, transcriber, options
        self.speechlm = transcriber.model if isinstance(transcriber, SpeechLLMTranscriber) else None
        self.kind = "speech-llm" if self.speechlm is not None else "asr"
        self._variants = {"transcribe": transcriber}  # a speech-LLM's transcriber per task
        self.worker = ModelWorker(model_id, self._run, options.batch_size, options.max_queue)

    @classmethod
    def load(cls, spec: str, options: ModelOptions) -> ServedModel:
        import speechllm
        from speechllm.apps.commands import preflight

        model_id, source = public_id(spec)
        preflight.check_model(source, needs_speechlm=False)
        with preflight.naming_model(source):
            transcriber = speechllm.load(source, device=options.device, batch_size=options.batch_size,
                                         beam_size=options.beam_size, segmenter=options.segmenter)
        return cls(model_id, transcriber, options)

    # ---------------------------------------------------------------- requests

    def transcriber_for(self, request: SpeechToText):
        """The transcriber for ``request``, sharing this model's weights; a 400 when it cannot."""
        if self.speechlm is not None:
            return self._speechlm_variant(request)
        base = self.transcriber
        try:
            task = base.check_task(request.task)
        except ValueError:
            raise bad_request(f"{self.id} is an English-only speech recognition model: it cannot translate "
                              "(use a multilingual Whisper or a speech-LLM)", param="model",
                              code="model_not_supported") from None
        try:
            language = base.check_language(request.language)
        except ValueError:  # the checks' own messages name CLI flags and host paths
            english = not base.model.config.is_multilingual
            message = (f"{self.id} transcribes English only, not {request.language!r}" if english
                       else f"language {request.language!r} is not one {self.id} knows")
            raise bad_request(message, param="language") from None
        options = replace(base.options, task=task, language=language, initial_prompt=request.prompt,
                          word_timestamps=request.words,
                          temperatures=(TEMPERATURE_FALLBACK if request.temperature == 0
                                        else (request.temperature,)))
        variant = copy.copy(base)  # the same weights and segmenter, other decoding options
        variant.options = options
        return variant

    def _speechlm_variant(self, request: SpeechToText):
        for field, given, why in (("prompt", request.prompt, "takes no text prompt"),
                                  ("temperature", request.temperature, "decodes greedily (temperature 0)"),
                                  ("timestamp_granularities", request.words, "gives no word times")):
            if given:
                raise bad_request(f"{self.id} is a speech-LLM: it {why}; use a Whisper model for {field}",
                                  param=field)
        if request.task not in self._variants:
            from speechllm.speechlm import SpeechLLMTranscriber

            self._variants[request.task] = SpeechLLMTranscriber(
                self.speechlm, task=request.task, batch_size=self.options.batch_size,
                beam_size=self.options.beam_size, segmenter=self.options.segmenter)
        return self._variants[request.task]

    def check_chat(self) -> None:
        if self.speechlm is None:
            raise bad_request(f"{self.id} is a speech recognition model; chat completions need a speech-LLM",
                              param="model", code="model_not_supported")

    def submit(self, job: Job) -> Job:
        try:
            return self.worker.submit(job)
        except QueueFull:
            raise queue_full(f"model {self.id}") from None

    # ---------------------------------------------------------------- the worker's side

    def _run(self, kind: str, jobs: list[Job]) -> None:
        RUNNERS[kind](self, jobs)


def run_transcriptions(model: ServedModel, jobs: list[Job]) -> None:
    transcriber = model.transcriber_for(jobs[0].key)  # jobs of one batch ask for the same
    results = transcriber.transcribe_many([job.payload.audio for job in jobs])
    for job, (_, result) in zip(jobs, results, strict=True):
        if isinstance(result, Exception):  # an AudioError of this request's audio only
            job.fail(bad_request(f"the audio cannot be used: {result.reason}", param="file"))
        else:
            job.finish(result)


def run_transcription_stream(model: ServedModel, jobs: list[Job]) -> None:
    """One recording's segments, each sent as it is decoded (``stream=true``); the transcript at the end."""
    (job,) = jobs
    segments, _ = model.transcriber_for(job.key).transcribe(job.payload.audio, stream=True)
    said = []
    for segment in segments:
        if job.cancelled.is_set():  # the client went away: stop decoding
            segments.close()
            return
        if segment.text:
            job.emit(Delta((" " if said else "") + segment.text))
            said.append(segment.text)
    job.finish(" ".join(said))


def run_chat(model: ServedModel, jobs: list[Job]) -> None:
    from speechllm.speechlm import GenerationOptions

    options = GenerationOptions(max_new_tokens=jobs[0].payload.max_new_tokens)
    audio = [job.payload.audio for job in jobs] if jobs[0].payload.audio is not None else None
    replies = model.speechlm.generate(audio, [job.payload.prompt for job in jobs], options)
    for job, reply in zip(jobs, replies, strict=True):
        job.finish(reply)


def run_chat_stream(model: ServedModel, jobs: list[Job]) -> None:
    from speechllm.speechlm import GenerationOptions

    (job,) = jobs
    request: ChatJob = job.payload
    options = GenerationOptions(max_new_tokens=request.max_new_tokens)
    if not hasattr(model.speechlm, "stream"):  # a pipeline without token streaming: one piece
        audio = None if request.audio is None else [request.audio]
        job.emit(Delta(model.speechlm.generate(audio, [request.prompt], options)[0].text))
        job.finish(None)
        return
    pieces = model.speechlm.stream(request.audio, request.prompt, options)
    for piece in pieces:
        if job.cancelled.is_set():  # the client went away: stop generating
            pieces.close()
            return
        job.emit(Delta(piece))
    job.finish(None)


RUNNERS: dict[str, Callable[[ServedModel, list[Job]], None]] = {
    "transcription": run_transcriptions,
    "transcription-stream": run_transcription_stream,
    "chat": run_chat,
    "chat-stream": run_chat_stream,
}


# ---------------------------------------------------------------- voices


class ServedVoice:
    """A ``speechllm.tts`` voice. Synthesis runs in the request's own thread, chunk by chunk; the
    voice's lock is held only while a chunk is made, so requests take turns chunk by chunk and a
    slow reader holds nothing while its chunk is sent."""

    def __init__(self, name: str, voice, max_active: int):
        self.name, self.voice, self.max_active = name, voice, max_active
        self.sample_rate = int(voice.sample_rate)
        self.lock = threading.Lock()
        self.active = 0
        self._count = threading.Lock()

    @classmethod
    def load(cls, spec: str, max_active: int) -> ServedVoice:
        """A voice by registry name, or a TTS folder (served by its name, or ``ID=FOLDER``)."""
        from speechllm import tts

        name, source = public_id(spec)
        return cls(name, tts.load(source), max_active)

    def admit(self) -> None:
        with self._count:
            if self.active >= self.max_active:
                raise queue_full(f"voice {self.name}")
            self.active += 1

    def chunks(self, text: str, speaker=None) -> Iterator[np.ndarray]:
        """Audio chunks of ``text`` as they are made, by ``speaker`` (the voice at another speed,
        ``tts.at_speed``; default: the voice); call after :meth:`admit`, which this releases."""
        try:
            with self.lock:
                pieces = iter((speaker or self.voice).synthesize(text, stream=True))
            while True:
                with self.lock:
                    chunk = next(pieces, None)
                if chunk is None:
                    return
                yield np.asarray(chunk, dtype=np.float32).reshape(-1)
        finally:
            with self._count:
                self.active -= 1


def default_voice() -> str:
    """The project's own voice when its weights are installed, else Piper joe (as ``speechllm tts``)."""
    from speechllm import tts

    return tts.default_voice()


def check_unique(ids: list[str], what: str) -> None:
    seen = set()
    for name in ids:
        if name in seen:
            raise ValueError(f"two {what} are served as {name!r}: give one an id of its own "
                             "(--model ID=SOURCE)")
        seen.add(name)

