"""Training data for the TTS stages: a feature cache built once from ``tts`` manifests.

Every stage trains on the same cached arrays, so the frozen Whisper encoder runs once per
corpus instead of once per step (the machine this was built on has two CPU cores):

    CACHE/{split}-{part:03d}.safetensors    per part of ``PART`` utterances, flat arrays + offsets:
        enc  [sum T_enc, 384] fp16   Whisper encoder output (50 Hz)
        mel  [sum T_mel, 80]  fp16   the TTS log-mel (tts.mel, 50 Hz)
        wav  [sum samples]    int16  16 kHz audio
        phon [sum N] int16, dur [sum N] fp32   (distilled caches only: the teacher's phoneme ids and
                                                 each one's duration in mel frames)
      metadata "rows": JSON list of {"id", "text", "speaker"}
    CACHE/tokens-{split}.safetensors         speech tokens (25 Hz) from a trained tokenizer

A pack (``pack_cache``) has the same layout with 8-bit mels and no frames or audio: what the flow
and LM stages need, small enough to carry to a GPU machine.

Parts are written atomically and skipped when present, so an interrupted build resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from speechllm.files import atomic_save_tensors
from speechllm.text_normalize import normalize
from speechllm.tts.mel import MelConfig, mel_spectrogram
from speechllm.zoo import DEFAULT_ENCODER

PART = 64
ENCODER = DEFAULT_ENCODER  # the frozen encoder whose frames the cache holds
CHARS = " abcdefghijklmnopqrstuvwxyz'"  # CTC targets; index 0 is the blank
_CHAR_ID = {c: i + 1 for i, c in enumerate(CHARS)}


def char_ids(text: str) -> list[int]:
    """CTC targets: the scoring form of ``text`` (spoken, lower case), unknown characters dropped."""
    return [_CHAR_ID[c] for c in normalize(text) if c in _CHAR_ID]


def chars_text(ids: list[int]) -> str:
    return "".join(CHARS[i - 1] for i in ids if 0 < i <= len(CHARS))


@dataclass
class Corpus:
    """One split in memory: per utterance arrays (torch, as stored) and its text and speaker."""

    ids: list[str]
    texts: list[str]
    speakers: list[str]
    enc: list[torch.Tensor]
    mel: list[torch.Tensor]
    wav: list[torch.Tensor]
    tokens: list[torch.Tensor] | None = None
    phonemes: list[torch.Tensor] | None = None  # distilled caches: teacher phoneme ids
    durations: list[torch.Tensor] | None = None  # ... and their durations in mel frames

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: list[int]) -> Corpus:
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        return Corpus(pick(self.ids), pick(self.texts), pick(self.speakers), pick(self.enc), pick(self.mel),
                      pick(self.wav), pick(self.tokens), pick(self.phonemes), pick(self.durations))

    def __add__(self, other: Corpus) -> Corpus:
        """Both corpora's utterances (tokens, phonemes and durations only when both have them)."""
        both = lambda a, b: None if a is None or b is None else a + b  # noqa: E731
        return Corpus(self.ids + other.ids, self.texts + other.texts, self.speakers + other.speakers,
                      self.enc + other.enc, self.mel + other.mel, self.wav + other.wav,
                      both(self.tokens, other.tokens), both(self.phonemes, other.phonemes),
                      both(self.durations, other.durations))


def _split_flat(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _offsets(arrays: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([0] + np.cumsum([len(a) for a in arrays]).tolist(), dtype=torch.long)


def save_part(path: Path, rows: list[dict[str, str]], **arrays: list[torch.Tensor]) -> None:
    """One cache part: per key (enc, mel, wav, phon, dur) the utterances' arrays flat + offsets."""
    flat: dict[str, torch.Tensor] = {}
    for key, values in arrays.items():
        flat[key], flat[f"{key}_off"] = torch.cat(values), _offsets(values)
    atomic_save_tensors(flat, path, {"rows": json.dumps(rows)})


@torch.inference_mode()
def build_cache(manifest: str | Path, cache: str | Path, split: str, encoder: str = ENCODER,
                batch_size: int = 8, mel_config: MelConfig | None = None,
                device: str | torch.device = "cpu") -> int:
    """Encode ``manifest`` into ``cache``; returns the number of utterances (all parts)."""
    from speechllm.audio import load_audio
    from speechllm.manifest import read_manifest
    from speechllm.speechlm.backbone import load_encoder

    mel_config = mel_config or MelConfig()
    rows = read_manifest(manifest)
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    whisper = None
    for start in range(0, len(rows), PART):
        path = cache / f"{split}-{start // PART:03d}.safetensors"
        if path.is_file():
            continue
        whisper = whisper or load_encoder(encoder).to(device)
        part = rows[start:start + PART]
        enc, mel, wav = [], [], []
        for b in range(0, len(part), batch_size):
            audios = [torch.from_numpy(load_audio(r.audio)) for r in part[b:b + batch_size]]
            lengths = torch.tensor([len(a) for a in audios])
            padded = torch.nn.utils.rnn.pad_sequence(audios, batch_first=True)
            hidden, mask = whisper.frames(padded, lengths, device)
            for i, audio in enumerate(audios):
                enc.append(hidden[i, : int(mask[i].sum())].half().cpu())
                mel.append(mel_spectrogram(audio, mel_config)[0].T.half())
                wav.append((audio.clamp(-1, 1) * 32767).round().short())
        meta = [{"id": r.extra.get("id", Path(r.audio).stem), "text": r.text or "",
                 "speaker": r.speaker or ""} for r in part]
        save_part(path, meta, enc=enc, mel=mel, wav=wav)
        print(f"cache {path.name}: {len(part)} utterances", flush=True)
    return len(rows)


def write_random_cache(cache: str | Path, frames: list[int], texts: list[str], seed: int = 0,
                       splits: tuple[str, ...] = ("train", "dev")) -> Path:
    """A cache of random frames, mels and audio in the real layout, one utterance per entry of
    ``frames`` (length at 50 Hz), speaker ``piper:joe``: for tests and training-speed measurements."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    for split in splits:
        for start in range(0, len(frames), PART):
            lengths = frames[start:start + PART]
            enc = [torch.randn(n, 384, generator=rng).half() for n in lengths]
            mel = [(torch.randn(n, 80, generator=rng) - 5).half() for n in lengths]
            wav = [(torch.randn(n * 320, generator=rng) * 3000).short() for n in lengths]
            rows = [{"id": f"{split}{start + i}", "text": texts[(start + i) % len(texts)],
                     "speaker": "piper:joe"} for i in range(len(lengths))]
            save_part(cache / f"{split}-{start // PART:03d}.safetensors", rows, enc=enc, mel=mel, wav=wav)
    return cache


def _stored_mel(f: Any) -> torch.Tensor:
    """A part's flat mel, fp16 (a pack stores it in 8 bits with its minimum and step)."""
    flat = f.get_tensor("mel")
    if flat.dtype != torch.uint8:
        return flat
    info = f.metadata()
    return (flat.float() * float(info["mel_step"]) + float(info["mel_min"])).half()


def load_corpus(cache: str | Path, split: str, tokens: bool = False) -> Corpus:
    """A split from the cache; ``tokens=True`` also reads ``tokens-{split}.safetensors``."""
    cache = Path(cache)
    parts = sorted(cache.glob(f"{split}-[0-9][0-9][0-9].safetensors"))
    if not parts:
        raise FileNotFoundError(f"{cache}: no cached '{split}' parts; run the 'cache' stage first")
    corpus = Corpus([], [], [], [], [], [])
    for path in parts:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["rows"])
            corpus.ids += [m["id"] for m in meta]
            corpus.texts += [m["text"] for m in meta]
            corpus.speakers += [m["speaker"] for m in meta]
            for key in ("enc", "mel", "wav"):
                flat = _stored_mel(f) if key == "mel" else f.get_tensor(key)
                getattr(corpus, key).extend(_split_flat(flat, f.get_tensor(f"{key}_off")))
            if "phon" in f.keys():
                for key, name in (("phon", "phonemes"), ("dur", "durations")):
                    arrays = _split_flat(f.get_tensor(key), f.get_tensor(f"{key}_off"))
                    setattr(corpus, name, (getattr(corpus, name) or []) + arrays)
    if tokens:
        path = cache / f"tokens-{split}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run the 'tokens' stage first")
        with safe_open(str(path), "pt") as f:
            ids = json.loads(f.metadata()["ids"])
            if ids != corpus.ids:
                raise ValueError(f"{path}: utterances differ from the cached '{split}' split; rerun 'tokens'")
            corpus.tokens = _split_flat(f.get_tensor("tokens"), f.get_tensor("tokens_off"))
    return corpus


def pack_cache(cache: str | Path, out: str | Path, max_mb: float | None = None) -> dict[str, int]:
    """What the flow and LM stages read (texts, speech tokens, mels) in a cache small enough to carry
    to another machine (a rented GPU): mels in 8 bits (per part: minimum + step, an error of at most
    half a step), no encoder frames, no audio. ``max_mb`` caps the size: the dev and test splits come
    first, then whole training parts while they fit. Returns the utterances packed per split."""
    cache, out = Path(cache), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget, used, counts = (max_mb or float("inf")) * 2**20, 0, {}
    for split in ("dev", "test", "train"):
        parts = sorted(cache.glob(f"{split}-[0-9][0-9][0-9].safetensors"))
        if not parts:
            continue
        tokens = load_corpus(cache, split, tokens=True)
        token_of = dict(zip(tokens.ids, tokens.tokens, strict=True))
        ids: list[str] = []
        for path in parts:
            with safe_open(str(path), "pt") as f:
                rows, mel_off = f.metadata()["rows"], f.get_tensor("mel_off")
                mel = _stored_mel(f).float()
            lo = float(mel.min()) if mel.numel() else 0.0
            step = max((float(mel.max()) - lo) / 255, 1e-6) if mel.numel() else 1.0
            codes = ((mel - lo) / step).round().clamp(0, 255).to(torch.uint8)
            if split == "train" and used + codes.numel() > budget:
                break
            used += codes.numel()
            empty_rows = torch.zeros(len(mel_off), dtype=torch.long)  # offsets: every row has length 0
            arrays = {"mel": codes, "mel_off": mel_off,
                      "enc": torch.zeros(0, 384, dtype=torch.float16), "enc_off": empty_rows,
                      "wav": torch.zeros(0, dtype=torch.int16), "wav_off": empty_rows.clone()}
            scale = {"mel_min": repr(lo), "mel_step": repr(step)}
            atomic_save_tensors(arrays, out / path.name, {"rows": rows, **scale})
            ids += [m["id"] for m in json.loads(rows)]
        if not ids:
            raise ValueError(f"--max-mb {max_mb}: not even one '{split}' part of {cache} fits")
        save_tokens(out, split, ids, [token_of[i] for i in ids])
        counts[split] = len(ids)
    return counts


def asr_corpus(manifests: list[str], encoder_cache: str | Path, encoder: str = ENCODER) -> Corpus:
    """Transcribed rows of ASR manifests whose Whisper frames are already in a speech-LLM encoder
    cache (``python -m speechllm.encoder_cache``): more speakers and hours for the tokenizer, which
    needs only frames and text. ``mel`` and ``wav`` are empty; rows without frames are skipped."""
    from safetensors.torch import load_file

    from speechllm.encoder_cache import EncoderCache
    from speechllm.manifest import read_manifest

    cache = EncoderCache(encoder_cache, encoder)
    corpus, skipped, empty = Corpus([], [], [], [], [], []), 0, torch.zeros(0)
    for manifest in manifests:
        for row in read_manifest(manifest):
            path = cache.path_for(row.audio) if row.text and Path(row.audio).is_file() else None
            if path is None or not path.is_file():
                skipped += 1
                continue
            corpus.ids.append(row.extra.get("id", Path(row.audio).stem))
            corpus.texts.append(row.text)
            corpus.speakers.append(row.speaker or "")
            corpus.enc.append(load_file(path)["hidden"])
            corpus.mel.append(empty)
            corpus.wav.append(empty)
    print(f"ASR data: {len(corpus)} utterances with cached frames, {skipped} skipped "
          f"(no text or not in {encoder_cache})", flush=True)
    return corpus


def save_tokens(cache: str | Path, split: str, ids: list[str], tokens: list[torch.Tensor]) -> None:
    atomic_save_tensors({"tokens": torch.cat(tokens).long(), "tokens_off": _offsets(tokens)},
                        Path(cache) / f"tokens-{split}.safetensors", {"ids": json.dumps(ids)})
