"""Streaming synthesis: text (or a stream of text pieces) → float32 audio chunks; TTS model folders.

Two kinds of own voice, one folder format:

    "lm-flow":  text ─► prepare (spoken form, ASCII) ─► sentences ─► per sentence, word by word:
        TextSpeechLM.stream (n text : m speech tokens) ─► FlowMatching.stream (chunk-causal,
        speaker prompt) ─► VocoderStream (causal Vocos, overlap-add) ─► audio chunks
    "acoustic": text ─► prepare ─► espeak-ng phonemes, sentence by sentence ─► AcousticModel
        (durations, mel; one pass per sentence) ─► VocoderStream in chunks ─► audio chunks

A TTS model folder (``speechllm.tts.load(folder)``; voices by name: :mod:`speechllm.tts.voices`)::

    MODEL_DIR/
      config.json        {"format": "speechllm-tts", "version": 1, "kind": "lm-flow" (default) | "acoustic",
                          "vocoder": {"kind": "vocos", "config": VocoderConfig}, "synthesis": {...},
                          lm-flow: "lm": LMConfig, "flow": FlowConfig;
                          acoustic: "acoustic": AcousticConfig,
                                    "frontend": {"espeak_voice", "phoneme_id_map"}}
      vocoder.safetensors
      lm-flow:  lm.safetensors (TTS LoRA + speech embeddings + head; the backbone loads by zoo name),
                flow.safetensors, prompt.safetensors (speaker prompt: "mel" [80, P], "tokens" [P / 2])
      acoustic: acoustic.safetensors

Every voice has ``sample_rate`` and ``synthesize(text, stream=False)``: the whole waveform, or
with ``stream=True`` an iterator of float32 chunks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from speechllm.files import atomic_save_tensors, atomic_write_text
from speechllm.tts.acoustic import AcousticConfig, AcousticModel
from speechllm.tts.flow import FlowConfig, FlowMatching
from speechllm.tts.lm import LMConfig, SamplingOptions, TextSpeechLM, split_words
from speechllm.tts.text import prepare_text, sentence_streams, sentences
from speechllm.tts.vocoder import VOCODERS, VocoderConfig

FORMAT, VERSION = "speechllm-tts", 1


@dataclass(frozen=True)
class SynthesisOptions:
    flow_steps: int = 6
    temperature: float = 0.8
    top_k: int = 20
    seed: int = 0
    max_speech_per_text: float = 20.0  # speech tokens per text token before a sentence is cut off
    first_chunk: int = 4  # speech tokens in the first streamed chunk (the rest come a group at a time)


class SpeechTTS:
    """The project's own voice: text-speech LM → flow matching → vocoder, all streaming."""

    def __init__(self, lm: TextSpeechLM, flow: FlowMatching, vocoder: torch.nn.Module,
                 prompt_mel: torch.Tensor, prompt_tokens: torch.Tensor,
                 options: SynthesisOptions | None = None):
        self.lm, self.flow, self.vocoder = lm.eval(), flow.eval(), vocoder.eval()
        self.prompt_mel, self.prompt_tokens = prompt_mel, prompt_tokens
        self.options = options or SynthesisOptions()
        self.sample_rate = getattr(vocoder, "config", VocoderConfig()).sample_rate

    def _sampling(self) -> SamplingOptions:
        o = self.options
        return SamplingOptions(temperature=o.temperature, top_k=o.top_k, seed=o.seed,
                               max_tokens_per_text_token=o.max_speech_per_text, first_yield=o.first_chunk)

    def synthesize(self, text: str | Iterable[str], stream: bool = False
                   ) -> np.ndarray | Iterator[np.ndarray]:
        """``text``: a string, or an iterable of text pieces (then always streamed)."""
        if isinstance(text, str):
            prepared = prepare_text(text)
            if stream:
                return self._stream(iter([prepared]))
            return self._whole(prepared)
        return self._stream(iter(text))

    def synthesize_tokens(self, tokens: torch.Tensor, stream: bool = False) -> np.ndarray:
        """Speech tokens straight to audio (no LM): resynthesis, for checking the flow and vocoder."""
        mel = self.flow.synthesize(tokens, self.prompt_mel, self.prompt_tokens, self.options.flow_steps)
        return self.vocoder(mel[None])[0].numpy()

    def _stream(self, pieces: Iterator[str]) -> Iterator[np.ndarray]:
        steps = self.options.flow_steps
        for words in sentence_streams(pieces):
            token_chunks = self.lm.stream(words, self._sampling())
            mels = self.flow.stream(token_chunks, self.prompt_mel, self.prompt_tokens, steps)
            yield from vocode(self.vocoder, mels)

    def _whole(self, prepared: str) -> np.ndarray:
        """Non-streaming: all speech tokens first, then full-attention flow and the vocoder per sentence."""
        out = []
        for sentence in sentences(prepared):
            chunks = self.lm.stream(split_words(sentence), self._sampling())
            tokens = [t for chunk in chunks for t in chunk.tolist()]
            if not tokens:
                continue
            mel = self.flow.synthesize(torch.tensor(tokens), self.prompt_mel, self.prompt_tokens,
                                       self.options.flow_steps)
            with torch.no_grad():
                out.append(self.vocoder(mel[None])[0].numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


@dataclass(frozen=True)
class AcousticOptions:
    speed: float = 1.0  # > 1 speaks faster
    first_chunk: int = 8  # mel frames (20 ms each) of a sentence's first streamed chunk
    chunk: int = 25  # mel frames of every later chunk


class AcousticTTS:
    """The project's own voice, phoneme route: espeak-ng phonemes (the teacher's frontend and id map)
    → :class:`~speechllm.tts.acoustic.AcousticModel` → vocoder. Whole and streamed synthesis cut the
    text into the same sentences and give the same samples."""

    def __init__(self, model: AcousticModel, vocoder: torch.nn.Module, frontend: dict[str, Any],
                 options: AcousticOptions | None = None):
        self.model, self.vocoder = model.eval(), vocoder.eval()
        self.espeak_voice, self.id_map = frontend["espeak_voice"], frontend["phoneme_id_map"]
        self.options = options or AcousticOptions()
        self.sample_rate = getattr(vocoder, "config", VocoderConfig()).sample_rate

    def with_speed(self, speed: float) -> AcousticTTS:
        """The same weights at ``speed`` times the rate its options give (the durations divided)."""
        faster = copy.copy(self)
        faster.options = replace(self.options, speed=self.options.speed * speed)
        return faster

    def synthesize(self, text: str | Iterable[str], stream: bool = False
                   ) -> np.ndarray | Iterator[np.ndarray]:
        """``text``: a string, or an iterable of text pieces (then always streamed, sentence by sentence)."""
        if not isinstance(text, str):
            return (chunk for words in sentence_streams(iter(text))
                    for chunk in self._stream(prepare_text(" ".join(words))))
        prepared = prepare_text(text)
        if stream:
            return self._stream(prepared)
        with torch.no_grad():
            out = [self.vocoder(mel[None])[0].numpy() for mel in self._mels(prepared)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    @torch.no_grad()
    def _mels(self, prepared: str) -> Iterator[torch.Tensor]:
        from speechllm.tts.piper import iter_phonemize, phoneme_ids

        for sentence in sentences(prepared):
            for phonemes in iter_phonemize(sentence, self.espeak_voice):
                ids = torch.tensor(phoneme_ids(phonemes, self.id_map))
                yield self.model.synthesize(ids, self.options.speed)

    def _stream(self, prepared: str) -> Iterator[np.ndarray]:
        first, size = self.options.first_chunk, self.options.chunk
        for mel in self._mels(prepared):
            bounds = [0, *range(first, mel.shape[1], size), mel.shape[1]]
            yield from vocode(self.vocoder, (mel[:, a:b] for a, b in zip(bounds, bounds[1:], strict=False)))


def vocode(vocoder: torch.nn.Module, mels: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
    """One utterance's mel chunks ([n_mels, n] each) through a fresh vocoder stream: float32 audio chunks
    as they are final (the vocoder's own stream, or for one without, Griffin-Lim, all at the end)."""
    voc = vocoder.stream() if hasattr(vocoder, "stream") else _WholeVocoderStream(vocoder)
    for mel in mels:
        audio = voc.push(mel)
        if len(audio):
            yield audio.numpy().astype(np.float32, copy=False)
    tail = voc.flush()
    if len(tail):
        yield tail.numpy().astype(np.float32, copy=False)


class _WholeVocoderStream:
    """A vocoder without a streaming form (Griffin-Lim): collects mel, renders it at the end."""

    def __init__(self, vocoder: torch.nn.Module):
        self.vocoder, self.mels = vocoder, []

    def push(self, mel: torch.Tensor) -> torch.Tensor:
        self.mels.append(mel)
        return torch.zeros(0)

    def flush(self) -> torch.Tensor:
        return self.vocoder(torch.cat(self.mels, 1)[None])[0] if self.mels else torch.zeros(0)


# ---------------------------------------------------------------- model folders


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """A frozen config dataclass from JSON (lists back to tuples; unknown keys refused)."""
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown options {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def save_tts(folder: str | Path, lm: TextSpeechLM, flow: FlowMatching, vocoder: torch.nn.Module,
             prompt_mel: torch.Tensor, prompt_tokens: torch.Tensor, options: SynthesisOptions | None = None,
             info: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(lm.saved_state(), folder / "lm.safetensors")
    atomic_save_tensors(flow.state_dict(), folder / "flow.safetensors")
    atomic_save_tensors(vocoder.state_dict(), folder / "vocoder.safetensors")
    atomic_save_tensors({"mel": prompt_mel.float(), "tokens": prompt_tokens.long()},
                        folder / "prompt.safetensors")
    document = {"format": FORMAT, "version": VERSION, "lm": _plain(asdict(lm.config)),
                "flow": _plain(asdict(flow.config)),
                "vocoder": {"kind": "vocos", "config": _plain(asdict(vocoder.config))},
                "synthesis": asdict(options or SynthesisOptions()), "info": info or {}}
    atomic_write_text(folder / "config.json", json.dumps(document, indent=2) + "\n")
    return folder


def save_acoustic_tts(folder: str | Path, model: AcousticModel, vocoder: torch.nn.Module,
                      frontend: dict[str, Any], options: AcousticOptions | None = None,
                      info: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.state_dict(), folder / "acoustic.safetensors")
    atomic_save_tensors(vocoder.state_dict(), folder / "vocoder.safetensors")
    document = {"format": FORMAT, "version": VERSION, "kind": "acoustic",
                "acoustic": _plain(asdict(model.config)),
                "frontend": frontend, "vocoder": {"kind": "vocos", "config": _plain(asdict(vocoder.config))},
                "synthesis": asdict(options or AcousticOptions()), "info": info or {}}
    atomic_write_text(folder / "config.json", json.dumps(document, indent=2) + "\n")
    return folder


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def is_tts_folder(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def load_tts_folder(folder: str | Path, options: Any = None, quant: str | None = "int4",
                    vocoder: str | None = None) -> SpeechTTS | AcousticTTS:
    """A TTS model folder, ready to speak (its ``kind`` picks the loader); ``vocoder="griffin-lim"``
    takes the weightless fallback; ``options``: the kind's synthesis options (SynthesisOptions,
    AcousticOptions), else the folder's."""
    folder = Path(folder)
    if not is_tts_folder(folder):
        raise FileNotFoundError(f"{folder}: not a TTS model folder (config.json with format {FORMAT!r})")
    document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if document.get("version", 0) > VERSION:
        raise ValueError(f"{folder}: TTS folder version {document['version']} is newer than this speechllm")
    kind = document.get("kind", "lm-flow")
    if kind not in FOLDER_KINDS:
        raise ValueError(f"{folder}: unknown TTS folder kind {kind!r} (known: {', '.join(FOLDER_KINDS)})")
    return FOLDER_KINDS[kind](folder, document, options, quant, _load_vocoder(folder, document, vocoder))


def _load_vocoder(folder: Path, document: dict[str, Any], vocoder: str | None) -> torch.nn.Module:
    kind = vocoder or document["vocoder"]["kind"]
    if kind not in VOCODERS:
        raise ValueError(f"unknown vocoder {kind!r} (known: {', '.join(VOCODERS)})")
    if kind != document["vocoder"]["kind"]:
        return VOCODERS[kind]()
    voc = VOCODERS[kind](config_from_dict(VocoderConfig, document["vocoder"]["config"]))
    voc.load_state_dict(load_file(folder / "vocoder.safetensors"))
    return voc


def _load_acoustic(folder: Path, document: dict[str, Any], options: AcousticOptions | None, quant: str | None,
                   voc: torch.nn.Module) -> AcousticTTS:
    model = AcousticModel(config_from_dict(AcousticConfig, document["acoustic"]))
    model.load_state_dict(load_file(folder / "acoustic.safetensors"))
    saved = AcousticOptions(**document.get("synthesis", {}))
    return AcousticTTS(model, voc, document["frontend"], options or saved)


def _load_lm_flow(folder: Path, document: dict[str, Any], options: SynthesisOptions | None, quant: str | None,
                  voc: torch.nn.Module) -> SpeechTTS:
    """The LoRA merged into the LM's linears, which ``quant`` ("int4", the default: 2.5x faster
    decoding than fp32 on a CPU core; "int8"; None keeps fp32) then stores low-bit."""
    lm = TextSpeechLM.build(config_from_dict(LMConfig, document["lm"]))
    lm.load_saved_state(load_file(folder / "lm.safetensors"))
    lm.merge_lora()
    if quant not in (None, "none", "fp32"):
        lm.quantize_linears(quant)
    flow = FlowMatching(config_from_dict(FlowConfig, document["flow"]))
    flow.load_state_dict(load_file(folder / "flow.safetensors"))
    prompt = load_file(folder / "prompt.safetensors")
    saved = SynthesisOptions(**document.get("synthesis", {}))
    return SpeechTTS(lm, flow, voc, prompt["mel"], prompt["tokens"], options or saved)


FOLDER_KINDS = {"lm-flow": _load_lm_flow, "acoustic": _load_acoustic}
