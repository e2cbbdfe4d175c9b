"""``/v1/chat/completions``: text and ``input_audio`` parts answered by the speech-LLM, streamed as
server-sent events or whole.

The last message is the turn (a user message: at most one recording and any text); earlier ones are
the history. The turn is asked as the voice chat asks it (``speechllm.apps.chat.engine``): a
recording alone is a spoken question, with a typed question it is a question about the recording
(the instruction of ``speechllm ask FILE QUESTION``), other text is a free instruction.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from speechllm.apps.serve.errors import bad_request, error_body, too_large
from speechllm.apps.serve.inputs import decode_audio, parse_json
from speechllm.apps.serve.models import ChatJob
from speechllm.apps.serve.workers import Delta, Done, Failed, Job

router = APIRouter()
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    data: str  # base64
    format: str = "wav"


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[TextPart | AudioPart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None

    def parts(self) -> list[TextPart | AudioPart]:
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content or [])

    def text(self) -> str:
        return " ".join(p.text.strip() for p in self.parts() if isinstance(p, TextPart) and p.text.strip())

    def audio(self) -> list[InputAudio]:
        return [p.input_audio for p in self.parts() if isinstance(p, AudioPart)]


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # decoding is greedy at any value
    n: int = Field(default=1, ge=1, le=1)


def build_prompt(messages: list[Message], turn_text: str, has_audio: bool) -> str:
    from speechllm.apps.chat.engine import ChatOptions, Turn, turn_request, with_history

    system = " ".join(m.text() for m in messages if m.role in ("system", "developer") and m.text())
    history = [Turn(m.role, m.text() or "(a recording)")
               for m in messages[:-1] if m.role in ("user", "assistant")]
    prompt = with_history(history, turn_request(turn_text, has_audio), ChatOptions().history_chars)
    return f"{system}\n\n{prompt}" if system else prompt


def check_turn_text(text: str) -> str:
    from speechllm.limits import MAX_PROMPT_CHARS

    if len(text) > MAX_PROMPT_CHARS:
        raise too_large(f"the message is {len(text):,} characters, over the limit of {MAX_PROMPT_CHARS:,}",
                        param="messages")
    return text


def audio_bytes(audio: InputAudio) -> tuple[bytes, str]:
    fmt = audio.format.lower()
    if fmt not in AUDIO_FORMATS:
        raise bad_request(f"input_audio.format {fmt[:20]!r}: choose from {', '.join(AUDIO_FORMATS)}",
                          param="messages")
    try:
        return base64.b64decode(audio.data, validate=True), f"input_audio.{fmt}"
    except (binascii.Error, ValueError):
        raise bad_request("input_audio.data is not valid base64", param="messages",
                          code="invalid_audio") from None


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    serve = request.app.state.serve
    body = parse_json(ChatRequest, await request.body())
    model = serve.model(body.model)
    model.check_chat()
    turn = body.messages[-1]
    if turn.role != "user":
        raise bad_request("the last message must be the user's turn", param="messages")
    recordings = turn.audio()
    if len(recordings) > 1:
        raise bad_request("one input_audio part per turn", param="messages")
    text = check_turn_text(turn.text())
    if not text and not recordings:
        raise bad_request("the last message has neither text nor input_audio", param="messages")
    limit = serve.limits.max_new_tokens
    max_new = body.max_completion_tokens or body.max_tokens or limit
    if max_new > limit:
        raise bad_request(f"max_tokens {max_new} is over this server's limit of {limit}", param="max_tokens")
    audio = None
    if recordings:
        data, name = audio_bytes(recordings[0])
        audio = await run_in_threadpool(decode_audio, data, name, serve.limits, "messages")
    prompt = build_prompt(body.messages, text, audio is not None)
    request_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    payload = ChatJob(audio, prompt, max_new)
    if body.stream:
        job = model.submit(Job("chat-stream", None, payload, batchable=False))
        return StreamingResponse(sse_events(job, request_id, created, model.id),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    job = model.submit(Job("chat", (audio is not None, max_new), payload))
    reply = await job.result()
    return JSONResponse({
        "id": request_id, "object": "chat.completion", "created": created, "model": model.id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": "length" if reply.stop == "length" else "stop"}],
        "usage": {"completion_tokens": len(reply.tokens)},
    })


async def sse_events(job: Job, request_id: str, created: int, model_id: str):
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if isinstance(event, Delta):
                yield chunk({"content": event.text})
            elif isinstance(event, Done):
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
                return
            elif isinstance(event, Failed):
                yield f"data: {json.dumps(error_body(event.error, 'the reply'))}\n\n"
                return
    finally:
        job.cancelled.set()  # finished, or the client went away: the worker stops generating
