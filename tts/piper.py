"""A small Piper VITS runner: text -> espeak-ng IPA phonemes -> ids -> onnxruntime -> audio.

Does what Piper does for an ``espeak`` voice: one phoneme string per sentence (clauses
joined with their punctuation, which the model was trained to pause on), ids from the
config's ``phoneme_id_map`` with BOS ``^``, EOS ``$`` and pad ``_`` after BOS and after every
phoneme, and the model inputs ``input``, ``input_lengths``, ``scales`` = [noise_scale,
length_scale, noise_w] (``sid`` for multi-speaker voices). Sentences are synthesised one by
one and joined; audio comes back as float32 at the voice's rate (22050 Hz for joe).

VITS draws noise inside the graph and onnxruntime seeds those ops when the session is
created: a voice made with ``seed=S`` gives the same audio for the same sequence of calls,
in any process.

>>> voice = PiperVoice.load()              # the zoo's piper-joe, 1 thread
>>> audio = voice.synthesize("Hello there.")  # float32, voice.sample_rate
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def _clauses(text: str) -> list[tuple[str, str]]:
    """(clause, terminator) as espeak-ng splits them: punctuation followed by a space or the end."""
    out = []
    for part in re.split(r"(?<=[.,;:!?])\s+", text.strip()):
        part = part.strip()
        if part:
            end = part[-1] if part[-1] in _CLAUSE_END else ""
            out.append((part, end))
    return out


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """IPA phonemes per sentence, with clause punctuation, via ``espeak-ng --ipa``."""
    if shutil.which("espeak-ng") is None:
        raise PiperError("espeak-ng is not installed: apt-get install espeak-ng")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    proc = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "-v", voice],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise PiperError(f"espeak-ng --ipa failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    lines = [re.sub(r"\([a-z-]+\)", "", line).strip() for line in proc.stdout.decode("utf-8").splitlines()]
    lines = [line for line in lines if line]
    clauses = _clauses(text)
    if len(lines) != len(clauses):  # espeak split differently: keep its clauses, lose the pauses
        clauses = [("", ",")] * (len(lines) - 1) + [("", ".")]
    sentences, current = [], ""
    for line, (_, end) in zip(lines, clauses, strict=False):
        current += line + end
        if end in _SENTENCE_END and end:
            sentences.append(current)
            current = ""
        else:
            current += " "
    if current.strip():
        sentences.append(current.strip())
    return sentences


def phoneme_ids(phonemes: str, id_map: dict[str, list[int]]) -> list[int]:
    """Piper's id sequence: ^ _ (p _)* $ ; characters the voice does not know are skipped."""
    ids = list(id_map[BOS]) + list(id_map[PAD])
    for ch in phonemes:
        if ch in id_map:
            ids.extend(id_map[ch])
            ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    return ids


class PiperVoice:
    """One Piper voice in one onnxruntime session (``threads`` intra-op threads, default 1)."""

    def __init__(self, model: str | Path, config: PiperConfig, threads: int = 1, seed: int | None = 0):
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
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    @classmethod
    def load(
        cls, name_or_path: str | Path = "piper-joe", threads: int = 1, seed: int | None = 0
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
        return cls(model, PiperConfig.from_json(config_path), threads=threads, seed=seed)

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
        audio = self.session.run(None, feed)[0]
        return np.clip(audio.reshape(-1), -1.0, 1.0).astype(np.float32, copy=False)

    def synthesize(self, text: str, **scales: Any) -> np.ndarray:
        """float32 mono at :attr:`sample_rate`; empty when ``text`` has nothing to say."""
        parts = [
            self.synthesize_ids(phoneme_ids(p, self.config.phoneme_id_map), **scales)
            for p in phonemize(text, self.config.espeak_voice)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
