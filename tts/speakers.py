"""Synthetic speakers: the voice engines (espeak-ng, flite, Piper) that turn text into 16 kHz float32 audio.

A :class:`Speaker` is an engine plus its settings, with a stable id used in manifests and in
the held-out-speaker rules::

    espeak:en-us+f3:s160:p45:g2   espeak-ng voice+variant, words/min, pitch 0-99, word gap (10 ms)
    flite:slt                     flite built-in voice (kal16, rms, awb, slt)
    piper:joe                     Piper VITS voice from the zoo (piper-joe)
    flite:rms:v115:h190:d95       a voice converted into a new speaker: formants x1.15 (a shorter
                                  vocal tract), median pitch 190 Hz, duration x0.95 (:func:`convert`)

Engines (:data:`ENGINES`) run the Debian tools as one short subprocess per utterance (espeak-ng
starts in ~10 ms, so batching buys little), writing a WAV into RAM that is read and deleted
at once.
A missing tool is reported once, with what to install (:func:`check_speakers`). The corpus recipes
draw their speakers from these (``speechllm.data_recipes.voices`` has the speaker grids), and any
speaker id is a voice of the registry in :mod:`speechllm.tts.voices` (``espeak:en-gb+m3``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from speechllm.audio import SAMPLE_RATE, resample


class MissingToolError(RuntimeError):
    """A synthesizer is not installed; the message says what to install."""


# a speaker id's settings after the engine and voice: letter -> Speaker field
_ID_FIELDS = {"s": "speed", "p": "pitch", "g": "gap", "v": "formant", "h": "f0", "d": "duration"}


@dataclass(frozen=True)
class Speaker:
    engine: str  # a key of ENGINES
    voice: str
    speed: int | None = None  # espeak-ng words per minute
    pitch: int | None = None  # espeak-ng 0-99
    gap: int | None = None  # espeak-ng word gap in 10 ms units
    formant: int | None = None  # voice conversion: formant shift ratio x100
    f0: int | None = None  # voice conversion: new median pitch in Hz
    duration: int | None = None  # voice conversion: duration factor x100

    @property
    def id(self) -> str:
        parts = [self.engine, self.voice]
        for letter, name in _ID_FIELDS.items():
            if getattr(self, name) is not None:
                parts.append(f"{letter}{getattr(self, name)}")
        return ":".join(parts)

    @property
    def converted(self) -> bool:
        return any(v is not None for v in (self.formant, self.f0, self.duration))

    @property
    def lang(self) -> str:
        return ENGINES[self.engine].lang(self.voice)

    @classmethod
    def parse(cls, speaker_id: str) -> Speaker:
        engine, voice, *rest = speaker_id.split(":")
        if engine not in ENGINES:
            raise ValueError(
                f"unknown voice engine {engine!r} in {speaker_id!r} (known: {', '.join(ENGINES)})"
            )
        try:
            opts = {_ID_FIELDS[r[0]]: int(r[1:]) for r in rest}
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                f"bad speaker id {speaker_id!r}: settings are a letter ({', '.join(_ID_FIELDS)}) and a number"
            ) from None
        return cls(engine, voice, **opts)

    def __str__(self) -> str:
        return self.id


class Engine(Protocol):
    name: str

    def missing(self, voice: str) -> str | None:
        """Why ``voice`` cannot be used here (what to install), or None when it can."""

    def synthesize(self, speaker: Speaker, text: str) -> np.ndarray:
        """16 kHz float32 mono."""

    def chars_per_second(self, speaker: Speaker) -> float:
        """Rough speaking rate, to plan a corpus' size before synthesising it."""

    def lang(self, voice: str) -> str: ...


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono, rate). Tolerates streamed headers whose sizes
    are placeholders (espeak-ng --stdout writes 0x7ffff...)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate, channels, bits = 12, 0, 1, 16
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if tag == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
        elif tag == b"data":
            if bits != 16:
                raise ValueError(f"{bits}-bit WAV is not supported")
            end = min(len(data), body + size)
            end -= (end - body) % (2 * channels)
            pcm = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            return pcm.reshape(-1, channels).mean(axis=1), rate
        pos = body + size + (size & 1)
    raise ValueError("WAV stream without a data chunk")


def _scratch_file() -> Path:
    """Where a synthesizer writes its WAV: in RAM (/dev/shm) when there is one. The file is made
    here, exclusively, under a random name and readable by us alone (a shared folder: a predictable
    name could be planted as a link beforehand); the synthesizer overwrites it. Writing a file is
    1.5-2x faster than reading espeak-ng's or flite's stdout; it is read and deleted at once."""
    shm = Path("/dev/shm")
    folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    fd, name = tempfile.mkstemp(prefix="speechllm-voice-", suffix=".wav", dir=folder)
    os.close(fd)
    return Path(name)


def _run_wav(cmd: list[str], out_flag: str, stdin: bytes | None = None) -> tuple[np.ndarray, int]:
    """Run a synthesizer that writes a WAV file (``out_flag PATH``) and read it back."""
    path = _scratch_file()
    try:
        proc = subprocess.run(cmd + [out_flag, str(path)], input=stdin, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:300]}"
            )
        return parse_wav(path.read_bytes())
    finally:
        path.unlink(missing_ok=True)


class EspeakEngine:
    name = "espeak"

    def missing(self, voice: str) -> str | None:
        return None if shutil.which("espeak-ng") else "espeak-ng is not installed: apt-get install espeak-ng"

    def synthesize(self, speaker: Speaker, text: str) -> np.ndarray:
        cmd = ["espeak-ng", "-b", "1", "-v", speaker.voice]
        for flag, value in (("-s", speaker.speed), ("-p", speaker.pitch), ("-g", speaker.gap)):
            if value is not None:
                cmd += [flag, str(value)]
        # "[[" starts espeak's phoneme input; newlines would end clauses early
        text = re.sub(r"\s+", " ", text.replace("[[", "[ ["))
        audio, rate = _run_wav(cmd, "-w", text.encode("utf-8"))
        return resample(audio, rate, SAMPLE_RATE)

    def chars_per_second(self, speaker: Speaker) -> float:
        return 16.0 * (speaker.speed or 175) / 175

    def lang(self, voice: str) -> str:
        return voice.split("+")[0].split("-")[0]


@lru_cache(maxsize=1)
def _flite_voices() -> tuple[str, ...]:
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False).stdout
    return tuple(out.split(":", 1)[-1].split())


class FliteEngine:
    name = "flite"
    _rates = {"kal16": 16.0, "rms": 15.0, "awb": 16.0, "slt": 16.2, "kal": 16.0}  # measured

    def missing(self, voice: str) -> str | None:
        if not shutil.which("flite"):
            return "flite is not installed: apt-get install flite"
        if voice not in _flite_voices():
            return f"flite has no voice {voice!r} (it has: {', '.join(_flite_voices())})"
        return None

    def synthesize(self, speaker: Speaker, text: str) -> np.ndarray:
        text = " ".join(text.split())
        audio, rate = _run_wav(["flite", "-voice", speaker.voice, "-t", text], "-o")
        return resample(audio, rate, SAMPLE_RATE)

    def chars_per_second(self, speaker: Speaker) -> float:
        return self._rates.get(speaker.voice, 16.0)

    def lang(self, voice: str) -> str:
        return "en"


class PiperEngine:
    """Piper voices from the zoo (``piper:joe`` -> zoo name ``piper-joe``), one session per process.

    VITS samples noise inside the graph from a generator seeded when the session is made;
    :func:`reseed` makes a fresh session so a unit of work (a shard) is reproducible.
    """

    name = "piper"

    def __init__(self) -> None:
        self._voices: dict[str, object] = {}
        self._seed = 0

    def missing(self, voice: str) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed: pip install onnxruntime"
        if not shutil.which("espeak-ng"):
            return "espeak-ng is not installed (Piper uses its phonemes): apt-get install espeak-ng"
        from speechllm.zoo import ZOO, ModelNotFoundError, resolve

        name = f"piper-{voice}"
        try:
            resolve(name, download=False)
        except ModelNotFoundError:
            entry = ZOO.get(name)
            hint = entry.bundle.install_hint if entry and entry.bundle else f"no zoo entry {name!r}"
            return f"Piper voice {voice!r} is not installed: {hint}"
        return None

    def reseed(self, seed: int) -> None:
        self._voices.clear()
        self._seed = seed

    def voice(self, voice: str):
        if voice not in self._voices:
            from speechllm.tts.piper import PiperVoice

            self._voices[voice] = PiperVoice.load(f"piper-{voice}", threads=1, seed=self._seed)
        return self._voices[voice]

    def synthesize(self, speaker: Speaker, text: str) -> np.ndarray:
        v = self.voice(speaker.voice)
        return resample(v.synthesize(text), v.sample_rate, SAMPLE_RATE)

    def chars_per_second(self, speaker: Speaker) -> float:
        return 18.2  # joe, measured

    def lang(self, voice: str) -> str:
        return "en"


ENGINES: dict[str, Engine] = {e.name: e for e in (EspeakEngine(), FliteEngine(), PiperEngine())}


def register_engine(engine: Engine) -> Engine:
    ENGINES[engine.name] = engine
    return engine


def check_speakers(speakers: Iterable[Speaker]) -> None:
    """One :class:`MissingToolError` naming every missing tool, or nothing."""
    speakers = list(speakers)
    problems = []
    for engine, voice in sorted({(s.engine, s.voice) for s in speakers}):
        problem = ENGINES[engine].missing(voice)
        if problem and problem not in problems:
            problems.append(problem)
    if any(s.converted for s in speakers) and importlib.util.find_spec("parselmouth") is None:
        problems.append(
            "voice conversion needs Praat's parselmouth: pip install praat-parselmouth (or speechllm[data])"
        )
    if problems:
        raise MissingToolError("; ".join(problems))


def convert(audio: np.ndarray, formant: float = 1.0, f0: float = 0.0, duration: float = 1.0) -> np.ndarray:
    """A new speaker from a recording: Praat's "Change gender" (PSOLA resynthesis) scales the
    formants by ``formant`` (> 1: a shorter vocal tract), moves the median pitch to ``f0`` Hz (0:
    unchanged, the contour's shape kept) and stretches time by ``duration``. 16 kHz float32 in and
    out. Cheap (~6 ms per second of speech) and stays intelligible to Whisper at 0.85-1.25 x."""
    import parselmouth

    sound = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=SAMPLE_RATE)
    out = parselmouth.praat.call(sound, "Change gender", 75, 600, formant, f0, 1.0, duration)
    rate = int(out.sampling_frequency)
    return resample(np.asarray(out.values[0], dtype=np.float32), rate, SAMPLE_RATE)


def synthesize(speaker: Speaker, text: str) -> np.ndarray:
    """``text`` spoken by ``speaker``: float32 mono at 16 kHz, peak at most 0.99."""
    audio = ENGINES[speaker.engine].synthesize(speaker, text)
    if speaker.converted and audio.size:
        audio = convert(
            audio,
            formant=(speaker.formant or 100) / 100,
            f0=float(speaker.f0 or 0),
            duration=(speaker.duration or 100) / 100,
        )
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return audio * (0.99 / peak) if peak > 0.99 else audio


def estimate_seconds(speaker: Speaker, text: str) -> float:
    seconds = 0.1 + len(text) / ENGINES[speaker.engine].chars_per_second(speaker)
    return seconds * (speaker.duration or 100) / 100


def reseed(seed: int) -> None:
    """Make engines with internal randomness (Piper) reproducible from here on."""
    for engine in ENGINES.values():
        if hasattr(engine, "reseed"):
            engine.reseed(seed)
