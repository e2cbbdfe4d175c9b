"""A small Piper VITS runner: text -> espeak-ng IPA phonemes -> ids -> onnxruntime -> audio.

Does what Piper does for an ``espeak`` voice: one phoneme string per sentence (clauses
joined with their punctuation, which the model was trained to pause on; the text is cut into
clauses here and each is phonemized by libespeak-ng, as piper-phonemize does, so no text
loses its pauses; a sentence longer than :data:`MAX_PHONEMES` is cut into chunks), ids from the
config's ``phoneme_id_map`` with BOS ``^``, EOS ``$`` and pad ``_`` after BOS and after every
phoneme, and the model inputs ``input``, ``input_lengths``, ``scales`` = [noise_scale,
length_scale, noise_w] (``sid`` for multi-speaker voices). Sentences are synthesised one by
one (:meth:`PiperVoice.synthesize_chunks` yields each) and joined; audio comes back as float32
at the voice's rate (22050 Hz for joe).

VITS draws noise inside the graph and onnxruntime seeds those ops when the session is
created: a voice made with ``seed=S`` gives the same audio for the same sequence of calls,
in any process.

>>> voice = PiperVoice.load()              # the zoo's piper-joe, 1 thread
>>> audio = voice.synthesize("Hello there.")  # float32, voice.sample_rate
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from speechllm.zoo import PIPER_VOICE

BOS, EOS, PAD = "^", "$", "_"
_CLAUSE_END = ".,;:!?"
_SENTENCE_END = ".!?"


class PiperError(RuntimeError):
    """The voice, onnxruntime or espeak-ng is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class PiperConfig:
    sample_rate: int
    espeak_voice: str
    noise_scale: float
    length_scale: float
    noise_w: float
    num_speakers: int
    phoneme_id_map: dict[str, list[int]] = field(hash=False, repr=False)

    @classmethod
    def from_json(cls, path: str | Path) -> PiperConfig:
        cfg: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        if cfg.get("phoneme_type", "espeak") != "espeak":
            raise PiperError(f"{path}: phoneme_type {cfg['phoneme_type']!r} is not supported (espeak only)")
        inference = cfg.get("inference", {})
        return cls(
            sample_rate=int(cfg["audio"]["sample_rate"]),
            espeak_voice=cfg.get("espeak", {}).get("voice", "en-us"),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
            num_speakers=int(cfg.get("num_speakers", 1)),
            phoneme_id_map=cfg["phoneme_id_map"],
        )


# Piper's VITS runs a whole id sequence at once and its memory grows faster than its length (50,000
# characters in one piece asked onnxruntime for 42 GB). A chunk of at most this many phoneme
# characters (~19 s of speech; joe: +0.36 GB, against +1.3 GB at 1,200) keeps each run small;
# longer sentences are cut at clauses, then at words.
MAX_PHONEMES = 400
_CLOSERS = "\"')]}\u201d\u2019\u00bb"
# clause punctuation followed by a space, with or without a closing quote or bracket in between
_BREAK = re.compile(r"(?<=[.,;:!?])\s+|(?<=[.,;:!?][\"')\]}\u201d\u2019\u00bb])\s+")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "cf"}


def _clauses(text: str) -> list[tuple[str, str]]:
    """(clause, terminator): text cut after clause punctuation followed by a space, except after
    an abbreviation or an initial (``Mr.``, ``J.``), which starts no new sentence."""
    out: list[tuple[str, str]] = []
    pending = ""
    for part in _BREAK.split(text.strip()):
        part = f"{pending} {part}".strip() if pending else part.strip()
        if not part:
            continue
        word = part.rsplit(" ", 1)[-1]
        if word.endswith(".") and (word[:-1].lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]\.", word)):
            pending = part
            continue
        pending = ""
        bare = part.rstrip(_CLOSERS)
        out.append((part, bare[-1] if bare and bare[-1] in _CLAUSE_END else ""))
    if pending:
        out.append((pending, "."))
    return out


class _Espeak:
    """libespeak-ng in this process, as piper-phonemize uses it: ``espeak_TextToPhonemes`` turns
    one clause into IPA per call. Phonemizing our own clauses one by one keeps their punctuation
    whatever espeak-ng would have merged or split, and costs microseconds, not a process each."""

    CHARS_UTF8, PHONEMES_IPA = 1, 0x02
    SYNCHRONOUS, DONT_EXIT = 2, 0x8000

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            raise PiperError("espeak-ng is not installed (libespeak-ng): apt-get install espeak-ng")
        lib = ctypes.CDLL(name)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if lib.espeak_Initialize(self.SYNCHRONOUS, 0, None, self.DONT_EXIT) <= 0:
            raise PiperError("libespeak-ng failed to initialise (is espeak-ng-data installed?)")
        self._ctypes, self._lib, self._voice = ctypes, lib, ""
        self._lock = threading.Lock()

    def phonemes(self, text: str, voice: str) -> str:
        """IPA of ``text`` (one clause; espeak-ng's own sub-clauses joined by a space)."""
        ctypes, lib = self._ctypes, self._lib
        data = text.replace("\0", " ").encode("utf-8")
        pieces = []
        with self._lock:
            if voice != self._voice:
                if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != 0:
                    raise PiperError(f"espeak-ng has no voice {voice!r}")
                self._voice = voice
            buffer = ctypes.create_string_buffer(data)
            pointer = ctypes.c_void_p(ctypes.addressof(buffer))
            while pointer.value:
                before = pointer.value
                out = lib.espeak_TextToPhonemes(ctypes.byref(pointer), self.CHARS_UTF8, self.PHONEMES_IPA)
                if out:
                    pieces.append(out.decode("utf-8", errors="replace"))
                if pointer.value == before:
                    break
        return " ".join(" ".join(re.sub(r"\([a-z-]+\)", "", p).split()) for p in pieces).strip()


@lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    return _Espeak()


def _pack(pieces: Iterable[str], max_chars: int) -> Iterator[str]:
    """Consecutive pieces joined by spaces into chunks of at most ``max_chars`` (a piece is never cut)."""
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > max_chars:
            yield current
            current = ""
        current = f"{current} {piece}" if current else piece
    if current:
        yield current


def _words(phonemes: str, max_chars: int) -> Iterator[str]:
    """The words of ``phonemes``, a word longer than ``max_chars`` cut into pieces that fit."""
    for word in phonemes.split():
        while len(word) > max_chars:
            yield word[:max_chars]
            word = word[max_chars:]
        yield word


def _pieces(phonemes: str, max_chars: int) -> Iterator[str]:
    """``phonemes`` in pieces of at most ``max_chars``, cut between words (inside a word only
    when one word alone is longer)."""
    return _pack(_words(phonemes, max_chars), max_chars)


def _sentence_chunks(clauses: list[str], max_chars: int) -> Iterator[str]:
    """A sentence's clauses (phonemes + punctuation) packed into chunks of at most ``max_chars``."""
    return _pack((piece for clause in clauses for piece in _pieces(clause, max_chars)), max_chars)


def iter_phonemize(text: str, voice: str = "en-us", max_chars: int = MAX_PHONEMES) -> Iterator[str]:
    """IPA phonemes per sentence (clauses joined with their punctuation, which Piper's voices pause
    on), one at a time; a sentence longer than ``max_chars`` comes in several chunks."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, not {max_chars}")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return
    espeak = _espeak()
    sentence: list[str] = []
    for clause, end in _clauses(text):
        phonemes = espeak.phonemes(clause, voice)
        if phonemes:
            sentence.append(phonemes + end)
        elif sentence and end in _SENTENCE_END and end:  # "..." alone: the sentence still ends
            sentence[-1] = sentence[-1].rstrip(_CLAUSE_END) + end
        if end in _SENTENCE_END and end and sentence:
            yield from _sentence_chunks(sentence, max_chars)
            sentence = []
    if sentence:
        yield from _sentence_chunks(sentence, max_chars)


def phonemize(text: str, voice: str = "en-us", max_chars: int = MAX_PHONEMES) -> list[str]:
    """IPA phonemes per sentence, with clause punctuation; each at most ``max_chars`` long."""
    return list(iter_phonemize(text, voice, max_chars))


def phoneme_ids(phonemes: str, id_map: dict[str, list[int]]) -> list[int]:
    """Piper's id sequence: ^ _ (p _)* $ ; characters the voice does not know are skipped."""
    ids = list(id_map[BOS]) + list(id_map[PAD])
    for ch in phonemes:
        if ch in id_map:
            ids.extend(id_map[ch])
            ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    return ids


def _with_durations(model: Path) -> bytes:
    """The voice's graph with VITS's per-id durations (the ``Ceil`` of the duration predictor's
    output, in frames of the decoder's hop) as a second output."""
    try:
        import onnx
    except ImportError:
        raise PiperError("durations need the onnx package: pip install onnx") from None
    graph = onnx.load(str(model))
    ceil = [n.output[0] for n in graph.graph.node if n.op_type == "Ceil"]
    if len(ceil) != 1:
        raise PiperError(f"{model}: expected one Ceil node (VITS durations), found {len(ceil)}")
    graph.graph.output.append(onnx.helper.make_tensor_value_info(ceil[0], onnx.TensorProto.FLOAT, None))
    return graph.SerializeToString()


class PiperVoice:
    """One Piper voice in one onnxruntime session (``threads`` intra-op threads, default 1).
    ``durations=True`` also exposes each phoneme id's duration (:meth:`synthesize_ids_durations`):
    the teacher of the project's own voice."""

    HOP = 256  # VITS decoder samples per duration frame

    def __init__(self, model: str | Path, config: PiperConfig, threads: int = 1, seed: int | None = 0,
                 durations: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PiperError("onnxruntime is not installed: pip install onnxruntime") from None
        self.model_path = Path(model)
        self.config = config
        if seed is not None:
            ort.set_seed(int(seed) % (2**31))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        source = _with_durations(self.model_path) if durations else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    @classmethod
    def load(
        cls, name_or_path: str | Path = PIPER_VOICE, threads: int = 1, seed: int | None = 0,
        durations: bool = False,
    ) -> PiperVoice:
        """A zoo name, a voice folder or an ``.onnx`` path (its ``.onnx.json`` beside it)."""
        from speechllm.zoo import ModelNotFoundError, resolve

        try:
            resolved = resolve(str(name_or_path), download=False)
        except ModelNotFoundError as exc:
            raise PiperError(str(exc)) from None
        model = resolved.main_file if resolved.path.is_dir() and resolved.main_file else resolved.path
        if model.is_dir():
            found = sorted(model.glob("*.onnx"))
            if not found:
                raise PiperError(f"no .onnx voice in {model}")
            model = found[0]
        config_path = model.with_name(model.name + ".json")
        if not config_path.is_file():
            raise PiperError(f"{model}: its config {config_path.name} is missing")
        return cls(model, PiperConfig.from_json(config_path), threads=threads, seed=seed, durations=durations)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def synthesize_ids(
        self,
        ids: list[int],
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w: float | None = None,
        speaker_id: int = 0,
    ) -> np.ndarray:
        return self._run(ids, length_scale, noise_scale, noise_w, speaker_id)[0]

    def synthesize_ids_durations(self, ids: list[int], **scales: Any) -> tuple[np.ndarray, np.ndarray]:
        """(audio, durations): each id's duration in samples (float32, summing to the audio's
        length); needs a voice loaded with ``durations=True``."""
        audio, durations = self._run(ids, **scales)
        if durations is None:
            raise PiperError("this voice was loaded without durations=True")
        return audio, durations.reshape(-1).astype(np.float32) * self.HOP

    def _run(self, ids: list[int], length_scale: float | None = None, noise_scale: float | None = None,
             noise_w: float | None = None, speaker_id: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        cfg = self.config
        scales = [
            cfg.noise_scale if noise_scale is None else noise_scale,
            cfg.length_scale if length_scale is None else length_scale,
            cfg.noise_w if noise_w is None else noise_w,
        ]
        feed = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray(scales, dtype=np.float32),
        }
        if "sid" in self._inputs:
            feed["sid"] = np.asarray([speaker_id], dtype=np.int64)
        outputs = self.session.run(None, feed)
        audio = np.clip(outputs[0].reshape(-1), -1.0, 1.0).astype(np.float32, copy=False)
        return audio, outputs[1] if len(outputs) > 1 else None

    def synthesize_chunks(self, text: str, **scales: Any) -> Iterator[np.ndarray]:
        """Audio of each sentence (or chunk of a long one) in turn: memory stays bounded for any text."""
        for phonemes in iter_phonemize(text, self.config.espeak_voice):
            yield self.synthesize_ids(phoneme_ids(phonemes, self.config.phoneme_id_map), **scales)

    def synthesize(self, text: str, **scales: Any) -> np.ndarray:
        """float32 mono at :attr:`sample_rate`; empty when ``text`` has nothing to say."""
        parts = list(self.synthesize_chunks(text, **scales))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
