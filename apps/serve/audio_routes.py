"""``/v1/audio/transcriptions``, ``/v1/audio/translations`` (multipart upload) and ``/v1/audio/speech``."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from speechllm.apps.serve.errors import bad_request, error_body, too_large
from speechllm.apps.serve.formats import SPEECH_FORMATS, TRANSCRIPT_FORMATS
from speechllm.apps.serve.inputs import (
    client_name,
    decode_audio,
    form_choice,
    form_temperature,
    form_text,
    parse_json,
)
from speechllm.apps.serve.models import SpeechToText, TranscribeJob
from speechllm.apps.serve.workers import Delta, Done, Failed, Job
from speechllm.limits import MAX_PROMPT_CHARS

router = APIRouter()
GRANULARITIES = ("segment", "word")
STREAMED_FORMATS = ("json", "text")  # stream=true: OpenAI streams these only


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    return await speech_to_text(request, "transcribe")


@router.post("/v1/audio/translations")
async def translations(request: Request) -> Response:
    return await speech_to_text(request, "translate")


async def speech_to_text(request: Request, task: str) -> Response:
    """Read the whole upload, check every field, decode the audio, then queue it for the model."""
    serve = request.app.state.serve
    form = await request.form(max_files=1, max_fields=32)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_request("file is required: the audio as a multipart file field", param="file")
        model = serve.model(form_text(form, "model"))
        fmt = form_choice(form, "response_format", list(TRANSCRIPT_FORMATS), "json")
        temperature = form_temperature(form)
        prompt = form_text(form, "prompt") or None
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise too_large(f"prompt is {len(prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}",
                            param="prompt")
        language = (form_text(form, "language") or "").lower() or None
        if language is not None and not re.fullmatch(r"[a-z]{2,3}", language):
            raise bad_request(f"language {language[:20]!r}: give an ISO-639-1 code such as en",
                              param="language")
        if language is not None and task == "translate":
            raise bad_request("translations take no language: the text is English, whatever the audio's",
                              param="language")
        granularities = [g.strip() for g in [*form.getlist("timestamp_granularities[]"),
                                             *form.getlist("timestamp_granularities")] if isinstance(g, str)]
        for value in granularities:
            if value not in GRANULARITIES:
                raise bad_request(f"timestamp_granularities {value[:20]!r}: choose from segment, word",
                                  param="timestamp_granularities")
        if granularities and fmt != "verbose_json":
            raise bad_request("timestamp_granularities needs response_format verbose_json",
                              param="timestamp_granularities")
        stream = form_choice(form, "stream", ("true", "false"), "false") == "true"
        if stream and fmt not in STREAMED_FORMATS:
            raise bad_request(f"stream=true sends text as it is decoded: response_format must be "
                              f"{' or '.join(STREAMED_FORMATS)}, not {fmt}", param="stream")
        request_options = SpeechToText(task, language, prompt, temperature, "word" in granularities)
        name = client_name(upload.filename)
        data = await upload.read()  # the whole request body is capped (BodyLimit)
    finally:
        await form.close()
    await run_in_threadpool(model.transcriber_for, request_options)  # 400 when the model cannot
    audio = await run_in_threadpool(decode_audio, data, name, serve.limits)
    if stream:
        job = model.submit(Job("transcription-stream", request_options, TranscribeJob(audio),
                               batchable=False))
        return StreamingResponse(transcript_events(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    job = model.submit(Job("transcription", request_options, TranscribeJob(audio)))
    transcript = await job.result()
    return TRANSCRIPT_FORMATS[fmt](transcript, request_options)


async def transcript_events(job: Job):
    """OpenAI's transcription stream: ``transcript.text.delta`` per decoded segment, then
    ``transcript.text.done`` with the whole text (server-sent events)."""
    def event(body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    try:
        while True:
            item = await job.events.get()
            if isinstance(item, Delta):
                yield event({"type": "transcript.text.delta", "delta": item.text})
            elif isinstance(item, Done):
                yield event({"type": "transcript.text.done", "text": item.result})
                yield "data: [DONE]\n\n"
                return
            elif isinstance(item, Failed):
                yield event(error_body(item.error, "the transcription"))
                return
    finally:
        job.cancelled.set()  # finished, or the client went away: the worker stops decoding


class SpeechRequest(BaseModel):
    model: str
    input: str
    voice: str | None = None
    response_format: str = "mp3"  # OpenAI's default
    speed: float = 1.0
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"  # sse: base64 pieces as speech.audio.delta events


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Response:
    """Audio of ``input``, sent chunk by chunk as the voice makes it (mp3, opus, wav, pcm; flac once made),
    at ``speed`` (0.25-4) where the voice has a rate control."""
    from speechllm.tts import TextError, VoiceError, at_speed, prepare_text

    serve = request.app.state.serve
    body = parse_json(SpeechRequest, await request.body())
    voice = serve.voice(body.model, body.voice)
    if body.response_format not in SPEECH_FORMATS:
        raise bad_request(f"response_format {body.response_format[:20]!r} is not supported; choose from "
                          f"{', '.join(SPEECH_FORMATS)}", param="response_format")
    try:
        speaker = at_speed(voice.voice, body.speed)
    except (ValueError, VoiceError) as exc:
        raise bad_request(f"speed: {exc}", param="speed") from None
    if body.instructions:
        raise bad_request("instructions are not supported by these voices", param="instructions")
    text = body.input.strip()
    if len(text) > serve.limits.max_speech_chars:
        raise too_large(f"input is {len(text):,} characters, over the limit of "
                        f"{serve.limits.max_speech_chars:,}", param="input")
    try:
        prepare_text(text)
    except TextError as exc:
        raise bad_request(f"input: {exc}", param="input") from None
    media_type, encode = SPEECH_FORMATS[body.response_format]
    voice.admit()  # 503 when too many requests are speaking already
    audio = encode(voice.chunks(text, speaker), voice.sample_rate)
    headers = {"X-Sample-Rate": str(voice.sample_rate)}
    if body.stream_format == "sse":
        return StreamingResponse(speech_events(audio), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    return StreamingResponse(audio, media_type=media_type, headers=headers)


def speech_events(audio: Iterator[bytes]) -> Iterator[str]:
    """OpenAI's speech stream: each encoded piece base64 in a ``speech.audio.delta`` event, then
    ``speech.audio.done``."""
    def event(body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    for piece in audio:
        if piece:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
    yield event({"type": "speech.audio.done"})
