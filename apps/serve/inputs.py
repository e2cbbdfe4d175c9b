"""Request inputs checked before any model work: caps, audio decoding, form and JSON fields.

Audio arrives whole (an upload or base64) and is decoded by ``speechllm.audio`` (the CLI's
reader) from a private temporary file: the header first (400 for what is no usable recording,
413 over the duration cap, before decoding), then the samples. Errors name the client's file
name, never the temporary path.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from speechllm.apps.serve.errors import bad_request, too_large
from speechllm.limits import MAX_AUDIO_SECONDS, MAX_SPEECH_CHARS, MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_seconds: float = MAX_AUDIO_SECONDS
    max_speech_chars: int = MAX_SPEECH_CHARS
    max_new_tokens: int = 200  # the longest chat reply, and the default length

    def __post_init__(self):
        if self.max_upload_bytes < 1 or self.max_seconds <= 0 or self.max_new_tokens < 1:
            raise ValueError("upload size, duration and reply length limits must be positive")

    @property
    def max_body_bytes(self) -> int:
        """A whole request: a recording as base64 (4/3 of its size) and 1 MiB of other fields."""
        return self.max_upload_bytes * 4 // 3 + 4 + 2**20


def client_name(name: str | None, fallback: str = "the audio") -> str:
    name = Path(name or "").name[:100]
    return name or fallback


def decode_audio(data: bytes, name: str, limits: Limits, param: str = "file") -> np.ndarray:
    """16 kHz float32 mono samples of an uploaded recording (blocking: call it off the event loop)."""
    from speechllm.audio import AudioError, audio_info, load_audio

    if len(data) > limits.max_upload_bytes:
        raise too_large(f"{name}: {len(data) / 2**20:.1f} MiB is over the upload limit of "
                        f"{limits.max_upload_bytes / 2**20:.1f} MiB", param=param)
    suffix = re.sub(r"[^a-z0-9]", "", Path(name).suffix.lower())[:8]
    with tempfile.TemporaryDirectory(prefix="speechllm-serve-") as folder:
        path = Path(folder) / f"upload.{suffix or 'bin'}"
        path.write_bytes(data)
        try:
            info = audio_info(path)
            if info.duration > limits.max_seconds:
                raise too_large(f"{name}: {info.duration:.1f} s of audio is over the limit of "
                                f"{limits.max_seconds:g} s", param=param)
            return load_audio(path)
        except AudioError as exc:
            raise bad_request(f"{name}: {exc.reason}", param=param, code="invalid_audio") from None


def form_text(form, field: str, default: str | None = None) -> str | None:
    value = form.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a text field, not a file", param=field)
    return value.strip()


def form_choice(form, field: str, choices, default: str) -> str:
    value = form_text(form, field) or default
    if value not in choices:
        raise bad_request(f"{field} {value[:40]!r} is not supported; choose from {', '.join(choices)}",
                          param=field)
    return value


def form_temperature(form) -> float:
    """OpenAI's 0..1. Decoding is deterministic (greedy, or beam search with --beam-size) at any value."""
    text = form_text(form, "temperature")
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"temperature {text[:20]!r} is not a number", param="temperature") from None
    if not 0.0 <= value <= 1.0:
        raise bad_request(f"temperature {value:g} is outside 0..1", param="temperature")
    return value


def parse_json(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON request body as ``model``; the first problem as a 400 naming its field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        message = first.get("msg", "invalid request")
        raise bad_request(f"{where}: {message}" if where else message, param=where) from None
