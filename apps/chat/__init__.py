"""``speechllm chat``: a voice chat with the speech-LLM in the browser (Gradio).

* :mod:`.engine`: one turn in (speech or text), streamed text and speech out; no web code.
* :mod:`.voices`: the voices the answer can be spoken with, by name.
* :mod:`.ui`: the Gradio page and its server.
* :mod:`.turns`: hands-free turn-taking (Silero VAD: end of turn, barge-in), no web code;
  :mod:`.live`: a browser tab's microphone stream, its finished turn and the answer in progress.
* :mod:`.exposure`: what a remote client may pick (allow-lists fixed at start) and be told (no host
  paths), and the server's private temporary folder.
"""

from speechllm.apps.chat.engine import (
    QUANT_CHOICES,
    ChatEngine,
    ChatOptions,
    Notice,
    SentenceChunker,
    SpeechChunk,
    TextDelta,
    Turn,
    TurnDone,
    load_chat_model,
)
from speechllm.apps.chat.voices import (
    VOICES,
    Voice,
    VoiceError,
    default_voice,
    load_voice,
    register_voice,
)

__all__ = [
    "QUANT_CHOICES", "VOICES", "ChatEngine", "ChatOptions", "Notice", "SentenceChunker", "SpeechChunk",
    "TextDelta", "Turn", "TurnDone", "Voice", "VoiceError", "default_voice", "load_chat_model", "load_voice",
    "register_voice",
]
