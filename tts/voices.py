"""Voices by name: the one voice registry of the project (``speechllm tts``, the chat, the server and the
corpus recipes all choose their voices here).

:func:`load` takes a registry name (:data:`VOICES`), a TTS model folder, a Piper ``.onnx`` file or voice
folder, or a synthetic speaker id (``espeak:en-gb+m3:s150``, ``flite:slt``; :mod:`.speakers`):

* ``speechllm-joe``: the project's own streaming voice, registered once its weights are installed;
* ``piper-joe``: the zoo's Piper VITS voice (onnxruntime, natural, ~0.1 real-time factor), the
  fallback while the own voice is not installed;
* ``espeak``: espeak-ng (formant synthesis, robotic but a few milliseconds per sentence);
* ``none``: no voice (text only, for the chat).

Every voice has ``sample_rate`` and ``synthesize(text, stream=False)`` (the whole float32 waveform, or
with ``stream=True`` an iterator of chunks); :func:`at_speed` gives a voice that speaks faster or slower
(the own voice, Piper voices and espeak speakers can). The chat hands a voice one sentence or clause at a time
while the LLM is still writing and takes ``stream(text)`` (float32 mono chunks in [-1, 1]);
:func:`load_voice` gives every voice that form.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from speechllm.tts.synthesize import SpeechTTS, is_tts_folder, load_tts_folder
from speechllm.tts.text import prepare_text, sentences
from speechllm.zoo import PIPER_VOICE

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_VOICE = "speechllm-joe"
FALLBACK_VOICE = PIPER_VOICE
NO_VOICE = "none"
OWN_VOICES = {DEFAULT_VOICE: "joe"}  # registry name -> folder under tts/weights/


class Voice(Protocol):
    """What the chat speaks with: float32 chunks of ``text`` as they are made."""

    sample_rate: int

    def stream(self, text: str) -> Iterator[np.ndarray]: ...


class VoiceError(RuntimeError):
    """A voice that cannot be loaded, or cannot do what is asked; the message says why."""


SPEEDS = (0.25, 4.0)  # the speaking rates at_speed takes (OpenAI's speech API's range)


def at_speed(voice: Any, speed: float) -> Any:
    """``voice`` speaking ``speed`` times as fast (1.2: 20 % faster), sharing its weights; the voice
    itself at 1.0. A ValueError outside :data:`SPEEDS`; a VoiceError for a voice without a rate
    control (``with_speed``)."""
    low, high = SPEEDS
    if not low <= speed <= high:
        raise ValueError(f"speed {speed:g}: give a rate between {low:g} and {high:g}")
    if speed == 1.0:
        return voice
    if not hasattr(voice, "with_speed"):
        raise VoiceError(f"this voice ({type(voice).__name__}) cannot change its speed")
    return voice.with_speed(speed)


class PiperTTS:
    """A Piper voice (the zoo's joe by default); synthesises a whole sentence at a time."""

    def __init__(self, name_or_path: str = PIPER_VOICE, threads: int = 1):
        from speechllm.tts.piper import PiperError, PiperVoice

        try:
            self.voice = PiperVoice.load(name_or_path, threads=threads)
        except PiperError as exc:
            raise VoiceError(str(exc)) from None
        self.sample_rate = self.voice.sample_rate
        self.scales: dict[str, float] = {}  # Piper's inference scales over its config's (length_scale)

    def with_speed(self, speed: float) -> PiperTTS:
        faster = copy.copy(self)
        faster.scales = {**self.scales, "length_scale": self.voice.config.length_scale / speed}
        return faster

    def synthesize(self, text: str | Iterable[str], stream: bool = False
                   ) -> np.ndarray | Iterator[np.ndarray]:
        if not isinstance(text, str):
            text = "".join(text)
        prepared = prepare_text(text)
        if stream:
            return (self.voice.synthesize(s, **self.scales) for s in sentences(prepared))
        return self.voice.synthesize(prepared, **self.scales)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        """One chunk per sentence of ``text`` as espeak-ng's phonemizer splits it."""
        from speechllm.tts.piper import phoneme_ids, phonemize

        for sentence in phonemize(text, self.voice.config.espeak_voice):
            ids = phoneme_ids(sentence, self.voice.config.phoneme_id_map)
            yield self.voice.synthesize_ids(ids, **self.scales)


class SpeakerTTS:
    """A synthetic speaker of the corpus recipes (``espeak:en-us+f3``, ``flite:slt``, ...): the Debian
    synthesizers, a few milliseconds per sentence, 16 kHz."""

    sample_rate = 16000

    def __init__(self, speaker_id: str = "espeak:en-us"):
        from speechllm.tts.speakers import MissingToolError, Speaker, check_speakers

        try:
            self.speaker = Speaker.parse(speaker_id)
            check_speakers([self.speaker])
        except (ValueError, MissingToolError) as exc:
            raise VoiceError(str(exc)) from None

    def with_speed(self, speed: float) -> SpeakerTTS:
        """espeak-ng speakers only (its words per minute, 175 by default); flite has no rate control."""
        if self.speaker.engine != "espeak":
            raise VoiceError(f"{self.speaker.id}: only espeak speakers can change their speed")
        faster = copy.copy(self)
        faster.speaker = replace(self.speaker, speed=round((self.speaker.speed or 175) * speed))
        return faster

    def synthesize(self, text: str | Iterable[str], stream: bool = False
                   ) -> np.ndarray | Iterator[np.ndarray]:
        text = text if isinstance(text, str) else "".join(text)
        return self.stream(text) if stream else np.concatenate([np.zeros(0, np.float32), *self.stream(text)])

    def stream(self, text: str) -> Iterator[np.ndarray]:
        from speechllm.tts.speakers import synthesize

        if text.strip():
            yield synthesize(self.speaker, text)


class StreamingVoice:
    """A voice that only has ``synthesize(text, stream=True)`` (the project's own, a plug-in), as the
    chat's ``stream(text)``: float32 mono chunks."""

    def __init__(self, model: Any):
        self.model = model
        self.sample_rate = int(model.sample_rate)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        for chunk in self.model.synthesize(text, stream=True):
            yield np.asarray(chunk, dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------- the registry


def _own_voice(folder: str) -> Callable[..., SpeechTTS]:
    def load_own(**kwargs: Any) -> SpeechTTS:
        return load_tts_folder(WEIGHTS_DIR / folder, **kwargs)

    return load_own


def is_installed(name: str) -> bool:
    """Whether a registered own voice has its weights in the package."""
    return name in OWN_VOICES and is_tts_folder(WEIGHTS_DIR / OWN_VOICES[name])


VOICES: dict[str, Callable[..., Any]] = {
    **{name: _own_voice(folder) for name, folder in OWN_VOICES.items() if is_installed(name)},
    PIPER_VOICE: lambda **kwargs: PiperTTS(PIPER_VOICE),
    "espeak": lambda **kwargs: SpeakerTTS(),
    NO_VOICE: lambda **kwargs: None,
}


def register_voice(name: str, factory: Callable[..., Any]) -> None:
    """Offer a voice by name: ``factory(**options)`` makes it."""
    VOICES[name] = factory


def load(name_or_dir: str | Path | None = None, **kwargs: Any) -> Any:
    """A voice by registry name (default: the project's own), TTS model folder, Piper ``.onnx`` file or
    voice folder, or speaker id (``engine:voice...``). ``kwargs`` go to the project's own voices
    (``quant``, ``vocoder``, ``options``)."""
    name = str(name_or_dir or DEFAULT_VOICE)
    if name in OWN_VOICES and not is_installed(name):
        raise FileNotFoundError(f"voice {name!r}: its weights are not installed "
                                f"({WEIGHTS_DIR / OWN_VOICES[name]} is missing)")
    if name in VOICES:
        voice = VOICES[name](**kwargs)
        if voice is None:
            raise VoiceError(f"voice {name!r} says nothing (the chat's text-only choice)")
        return voice
    if is_tts_folder(name):
        return load_tts_folder(name, **kwargs)
    if name.endswith(".onnx") or Path(name).is_dir():
        return PiperTTS(name)
    if ":" in name:
        return SpeakerTTS(name)
    raise FileNotFoundError(f"unknown voice {name!r}: not a TTS model folder, Piper voice or speaker id, "
                            f"and not one of {', '.join(VOICES)}")


def load_voice(name: str) -> Voice | None:
    """The chat's form of :func:`load`: any voice as ``stream(text)``, None for ``none``."""
    voice = VOICES[name]() if name in VOICES else load(name)
    return voice if voice is None or hasattr(voice, "stream") else StreamingVoice(voice)
