"""The chat's voices: those of the one voice registry, :mod:`speechllm.tts.voices` (a registry name,
a Piper ``.onnx`` path, a corpus speaker id such as ``flite:slt``, a TTS model folder, or ``none``
for text only), each as ``stream(text)`` of float32 chunks."""

from speechllm.tts import default_voice
from speechllm.tts.voices import (
    FALLBACK_VOICE,
    VOICES,
    PiperTTS,
    SpeakerTTS,
    StreamingVoice,
    Voice,
    VoiceError,
    load_voice,
    register_voice,
)

__all__ = ["FALLBACK_VOICE", "VOICES", "PiperTTS", "SpeakerTTS", "StreamingVoice", "Voice", "VoiceError",
           "default_voice", "load_voice", "register_voice"]
