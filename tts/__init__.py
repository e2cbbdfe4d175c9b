"""Speech out: speech tokenizer, interleaved text-speech LM, flow matching, vocoder.

>>> from speechllm import tts
>>> voice = tts.load()                       # the project's own voice; tts.load("piper-joe") for Piper
>>> for chunk in voice.synthesize("Hello there.", stream=True):   # float32 chunks at voice.sample_rate
...     play(chunk)
"""

from speechllm.tts.synthesize import (
    DEFAULT_VOICE,
    VOICES,
    PiperTTS,
    SpeechTTS,
    SynthesisOptions,
    is_installed,
    load,
)
from speechllm.tts.text import TextError, prepare_text

__all__ = ["DEFAULT_VOICE", "VOICES", "PiperTTS", "SpeechTTS", "SynthesisOptions", "TextError",
           "is_installed", "load", "prepare_text"]
