"""Input limits shared by every front end (CLI, chat): one place to read and change them.

A 50,000-character question is not a question: it makes the LLM prefill for minutes. Front
ends refuse such input up front, with a one-line error naming the limit, before a model loads.
"""

from __future__ import annotations

MAX_PROMPT_CHARS = 2_000  # a typed question or instruction (ask QUESTION, the chat's text box)
MIN_SAMPLE_RATE = 1_000  # Hz; below it a header is corrupt or the file is not speech
# ``speechllm serve``: what one HTTP request may bring (OpenAI's audio API caps uploads at 25 MB)
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # an uploaded or base64 recording, as sent
MAX_AUDIO_SECONDS = 600.0  # a recording's duration, read from its header before decoding
MAX_SPEECH_CHARS = 4_096  # the text of one /v1/audio/speech request


def check_prompt(text: str, what: str = "QUESTION") -> str:
    """``text`` stripped, or a ValueError naming ``what`` when it is empty or over the limit."""
    text = text.strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} is {len(text):,} characters, over the limit of {MAX_PROMPT_CHARS:,}")
    return text
