"""Voices for the chat, chosen by name from a registry: text in, float32 audio chunks out as they are made.

A voice is anything with ``sample_rate`` and ``stream(text) -> Iterator[np.ndarray]`` (float32 mono
in [-1, 1]). The chat hands it one sentence or clause at a time while the LLM is still writing, so
the first audio plays long before the answer is finished.

* the project's own streaming voice (``speechllm.tts``), the default once its weights are installed;
* ``piper-joe``: the zoo's Piper VITS voice (the default until then; onnxruntime, natural, ~0.1
  real-time factor), one chunk per sentence;
* ``espeak``: espeak-ng (formant synthesis, robotic but a few milliseconds per sentence); any
  corpus speaker id works too (``flite:slt``, ``espeak:en-gb+m3:s150``; ``speechllm.data_recipes.voices``);
* ``none``: text only;
* any other name goes to the project's own streaming TTS, ``speechllm.tts.load(name)``, whose
  ``synthesize(text, stream=True)`` yields chunks; a Piper ``.onnx`` path works too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np


class Voice(Protocol):
    sample_rate: int

    def stream(self, text: str) -> Iterator[np.ndarray]: ...


class VoiceError(RuntimeError):
    """A voice that cannot be loaded; the message says what is missing."""


class PiperStreamVoice:
    """Piper synthesises a whole sentence at once: one chunk per sentence of the text it is given."""

    def __init__(self, name_or_path: str = "piper-joe", threads: int = 1):
        from speechllm.tts.piper import PiperError, PiperVoice

        try:
            self.voice = PiperVoice.load(name_or_path, threads=threads)
        except PiperError as exc:
            raise VoiceError(str(exc)) from None
        self.sample_rate = self.voice.sample_rate

    def stream(self, text: str) -> Iterator[np.ndarray]:
        from speechllm.tts.piper import phoneme_ids, phonemize

        for sentence in phonemize(text, self.voice.config.espeak_voice):
            yield self.voice.synthesize_ids(phoneme_ids(sentence, self.voice.config.phoneme_id_map))


class SpeakerVoice:
    """A synthetic speaker of the corpus recipes (``espeak:en-us+f3``, ``flite:slt``, ...): the
    Debian synthesizers, a few milliseconds per sentence, 16 kHz."""

    sample_rate = 16000

    def __init__(self, speaker_id: str = "espeak:en-us"):
        from speechllm.data_recipes.voices import MissingToolError, Speaker, check_speakers

        try:
            self.speaker = Speaker.parse(speaker_id)
            check_speakers([self.speaker])
        except (ValueError, MissingToolError) as exc:
            raise VoiceError(str(exc)) from None

    def stream(self, text: str) -> Iterator[np.ndarray]:
        from speechllm.data_recipes.voices import synthesize

        if text.strip():
            yield synthesize(self.speaker, text)


class ProjectVoice:
    """Adapter for ``speechllm.tts.load(name)``: ``synthesize(text, stream=True)`` yields chunks."""

    def __init__(self, name: str):
        import speechllm.tts as tts

        if not hasattr(tts, "load"):
            raise VoiceError(f"unknown voice {name!r} (known: {', '.join(VOICES)}); "
                             "this install has no speechllm.tts.load for other voices")
        self.model = tts.load(name)
        self.sample_rate = int(self.model.sample_rate)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        for chunk in self.model.synthesize(text, stream=True):
            yield np.asarray(chunk, dtype=np.float32).reshape(-1)


VOICES: dict[str, Callable[[], Voice | None]] = {
    "piper-joe": PiperStreamVoice,
    "espeak": SpeakerVoice,
    "none": lambda: None,
}
FALLBACK_VOICE = "piper-joe"


def default_voice() -> str:
    """The project's own streaming voice once its weights are installed; Piper joe until then."""
    import speechllm.tts as tts

    own = getattr(tts, "DEFAULT_VOICE", None)
    installed = getattr(tts, "is_installed", None)
    return own if own and installed is not None and installed(own) else FALLBACK_VOICE


def register_voice(name: str, factory: Callable[[], Voice | None]) -> None:
    VOICES[name] = factory


def load_voice(name: str) -> Voice | None:
    """A voice by registry name, Piper ``.onnx`` path, corpus speaker id (``engine:voice...``) or
    project TTS name (None for ``none``)."""
    if name in VOICES:
        return VOICES[name]()
    if name.endswith(".onnx") or Path(name).is_dir():
        return PiperStreamVoice(name)
    if ":" in name:
        return SpeakerVoice(name)
    return ProjectVoice(name)
