"""Speech out: speech tokenizer, interleaved text-speech LM, flow matching, vocoder; the voice registry.

>>> from speechllm import tts
>>> voice = tts.load()                       # the project's own voice; tts.load("piper-joe") for Piper
>>> for chunk in voice.synthesize("Hello there.", stream=True):   # float32 chunks at voice.sample_rate
...     play(chunk)
"""

from speechllm.tts.synthesize import SpeechTTS, SynthesisOptions
from speechllm.tts.text import TextError, prepare_text
from speechllm.tts.voices import (
    DEFAULT_VOICE,
    FALLBACK_VOICE,
    VOICES,
    PiperTTS,
    SpeakerTTS,
    Voice,
    VoiceError,
    at_speed,
    is_installed,
    load,
    load_voice,
    register_voice,
)


def default_voice() -> str:
    """The project's own streaming voice once its weights are installed; Piper joe until then."""
    return DEFAULT_VOICE if is_installed(DEFAULT_VOICE) else FALLBACK_VOICE


__all__ = ["DEFAULT_VOICE", "FALLBACK_VOICE", "VOICES", "PiperTTS", "SpeakerTTS", "SpeechTTS",
           "SynthesisOptions", "TextError", "Voice", "VoiceError", "at_speed", "default_voice",
           "is_installed", "load", "load_voice", "prepare_text", "register_voice"]
