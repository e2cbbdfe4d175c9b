"""The frozen parts of a speech-LLM: a speech encoder and a causal LM, each loaded by name.

Encoders come from the :data:`ENCODERS` registry and share one interface
(:class:`SpeechEncoder`): ``features(audio, lengths)`` turns padded 16 kHz audio into model
input on the fly, ``forward(inputs, lengths) -> (hidden [B, T, D], mask [B, T])``.

* ``whisper``: the project's own Whisper encoder (variable length, no 30 s padding);
* ``hf``: a Hugging Face speech encoder through ``transformers.AutoModel`` (wav2vec2, HuBERT).

:func:`load_backbone` loads the LLM: with ``quant`` set, through the project's low-bit loader
(``speechllm.llm.load_llm``); otherwise with transformers, in fp32, from a folder or a GGUF
file (dequantised), so that any Hugging Face causal LM with a chat template can serve.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from speechllm.zoo import resolve


class SpeechEncoder(nn.Module):
    """Frozen, except for its top ``trainable_layers`` blocks when a model fine-tunes them
    (:meth:`set_trainable_layers`): :meth:`frames` is then the frozen part (what an encoder cache
    stores) and :meth:`finish` the trained top."""

    dim: int
    max_seconds: float | None = None  # longest input it takes (None: no limit)
    trainable_layers: int = 0

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, inputs: Tensor, lengths: Tensor, skip_top: int = 0) -> tuple[Tensor, Tensor]:
        """(hidden [B, T, D], mask [B, T]); ``skip_top`` > 0 stops below the top blocks."""
        raise NotImplementedError

    def top_layers(self, n: int) -> nn.Module:
        """The modules of the top ``n`` blocks (with the final norm): what fine-tuning trains and saves."""
        raise ValueError(f"{type(self).__name__} has no trainable layers (only the whisper encoder has)")

    def set_trainable_layers(self, n: int) -> SpeechEncoder:
        """Let the top ``n`` blocks train (0: all frozen)."""
        if n:
            self.top_layers(n).requires_grad_(True)
        self.trainable_layers = n
        return self

    @torch.no_grad()
    def frames(self, audio: Tensor, lengths: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Padded 16 kHz audio [B, T] + lengths → the frozen part's (hidden [B, F, D], mask [B, F]) on
        ``device``: the whole encoder unless top layers train."""
        return self(*self.features(audio.to(device), lengths.to(device)), skip_top=self.trainable_layers)

    def finish(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The trainable top blocks over :meth:`frames`' output (nothing to do when none train)."""
        return hidden, mask


class WhisperEncoder(SpeechEncoder):
    max_seconds = 30.0

    def __init__(self, encoder: nn.Module, n_mels: int):
        super().__init__()
        self.encoder, self.n_mels = encoder, n_mels
        self.dim = encoder.ln_post.normalized_shape[0]

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        from speechllm.features import log_mel_spectrogram

        return log_mel_spectrogram(audio, lengths, n_mels=self.n_mels)

    def forward(self, inputs: Tensor, lengths: Tensor, skip_top: int = 0) -> tuple[Tensor, Tensor]:
        return self.encoder(inputs, lengths, skip_top)

    def top_layers(self, n: int) -> nn.Module:
        blocks = self.encoder.blocks
        if not 0 < n <= len(blocks):
            raise ValueError(f"this encoder has {len(blocks)} layers: between 1 and {len(blocks)} can train, "
                             f"not {n}")
        return nn.ModuleDict({"blocks": blocks[len(blocks) - n:], "ln_post": self.encoder.ln_post})

    def finish(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if not self.trainable_layers:
            return hidden, mask
        return self.encoder.finish(hidden, mask, self.trainable_layers)


class HFEncoder(SpeechEncoder):
    """wav2vec2 / HuBERT-style ``AutoModel`` on raw audio (normalised per item)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dim = model.config.hidden_size

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        valid = torch.arange(audio.shape[1], device=audio.device) < lengths[:, None]
        n = lengths[:, None].clamp(min=1)
        mean = (audio * valid).sum(1, keepdim=True) / n
        var = (((audio - mean) * valid) ** 2).sum(1, keepdim=True) / n
        return ((audio - mean) / (var + 1e-7).sqrt()) * valid, lengths

    def forward(self, inputs: Tensor, lengths: Tensor, skip_top: int = 0) -> tuple[Tensor, Tensor]:
        if skip_top:
            raise ValueError("the hf encoder is frozen whole")
        valid = torch.arange(inputs.shape[1], device=inputs.device) < lengths[:, None]
        hidden = self.model(inputs, attention_mask=valid.long()).last_hidden_state
        out_lengths = self.model._get_feat_extract_output_lengths(lengths)
        mask = torch.arange(hidden.shape[1], device=hidden.device) < out_lengths[:, None]
        return hidden * mask[..., None], mask


def _load_whisper_encoder(name_or_path: str) -> SpeechEncoder:
    from speechllm.whisper import load_whisper

    model, _ = load_whisper(resolve(name_or_path).path)
    return WhisperEncoder(model.encoder, model.config.n_mels)


def _load_hf_encoder(name_or_path: str) -> SpeechEncoder:
    from transformers import AutoModel

    return HFEncoder(AutoModel.from_pretrained(resolve(name_or_path).path))


ENCODERS: dict[str, Callable[[str], SpeechEncoder]] = {
    "whisper": _load_whisper_encoder,
    "hf": _load_hf_encoder,
}


def load_encoder(name_or_path: str, kind: str = "whisper") -> SpeechEncoder:
    """A frozen encoder (eval mode, no gradients) by registry kind and zoo name or path."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder kind {kind!r} (known: {', '.join(ENCODERS)})")
    encoder = ENCODERS[kind](name_or_path).eval()
    encoder.requires_grad_(False)
    return encoder


def load_backbone(name_or_path: str, quant: str | None = None, prepare: bool = True):
    """(causal LM, tokenizer) by zoo name, folder, GGUF file or Hugging Face id; frozen, eval mode.
    ``prepare=False`` leaves choosing the quantized kernels to the caller (after LoRA is loaded)."""
    if quant is not None:
        if importlib.util.find_spec("speechllm.llm") is None:
            raise ValueError(f"quant={quant!r} needs speechllm.llm, which this install lacks")
        from speechllm.llm import load_llm

        model, tokenizer = load_llm(name_or_path, quant=quant, prepare=prepare)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = resolve(name_or_path)
        folder, gguf = _gguf_parts(resolved.path, resolved.main_file)
        kwargs = {"gguf_file": gguf} if gguf else {}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if tokenizer.chat_template is None:
        raise ValueError(f"{name_or_path}: the tokenizer has no chat template")
    model.eval().requires_grad_(False)
    return model, tokenizer


def _gguf_parts(path: Path, main_file: Path | None) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None): a GGUF file itself, or a folder holding one and no config.json."""
    if path.is_file():
        return path.parent, path.name
    if (path / "config.json").is_file():
        return path, None
    gguf = main_file if main_file is not None and main_file.suffix == ".gguf" else None
    gguf = gguf or next(iter(sorted(path.glob("*.gguf"))), None)
    return path, (gguf.name if gguf else None)
