"""What every speech → LLM adapter shares: its contract, its output, and two small layers.

An adapter maps the encoder's output ``(hidden [B, T, D_enc], mask [B, T])`` (mask True on
valid frames) to LLM input embeddings ``(embeddings [B, N, D_llm], mask [B, N])``. Outputs at
masked positions are zero, and an item's valid outputs never depend on the padding of a batch:
each equals what the item gives alone. CTC-based adapters also return their CTC loss when
targets are given (``aux_loss``); the trainer adds it to the LLM's loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.vocab import ctc_vocab


@dataclass(frozen=True)
class AdapterOutput:
    embeddings: Tensor  # [B, N, D_llm], zero where mask is False
    mask: Tensor  # [B, N] bool, True on valid positions
    aux_loss: Tensor | None = None  # e.g. the CTC loss, when targets were given
    tokens: Tensor | None = None  # [B, N] the LLM token each position most likely stands for, when known


class Adapter(nn.Module):
    """Base class; subclasses name their frozen config dataclass in ``Config``."""

    Config: ClassVar[type]

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        raise NotImplementedError

    def attach_llm(self, embeddings: nn.Module) -> None:
        """Called once the LLM is loaded, with its input embedding table; most adapters ignore it."""

    def ctc_vocabulary(self, tokenizer):
        """The vocabulary of this adapter's CTC targets (see ``vocab.CTC_VOCABS``), or None without CTC."""
        name = getattr(self.config, "vocab", None)
        return ctc_vocab(name, tokenizer) if name else None

    def fit_vocabulary(self, tokenizer, texts) -> None:
        """Called on a freshly built adapter with the training transcripts, before training."""

    def ctc_only_loss(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor,
                      ctc_lengths: Tensor) -> Tensor | None:
        """The CTC loss alone (training without the LLM); adapters may skip their LLM-side output."""
        return self(hidden, mask, ctc_targets, ctc_lengths).aux_loss


def lengths_to_mask(lengths: Tensor, size: int | None = None) -> Tensor:
    """[B] lengths -> [B, size] bool mask, True for positions < length."""
    size = int(lengths.max()) if size is None else size
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def spec_augment(hidden: Tensor, mask: Tensor, time_share: float, channel_share: float,
                 span: int = 10) -> Tensor:
    """Zero random time spans (about ``time_share`` of each item's frames, ``span`` frames each)
    and random channels (``channel_share`` of them, per item) of [B, T, D] features (SpecAugment,
    applied to the encoder output so it works with cached encoder frames too)."""
    b, t, d = hidden.shape
    keep = torch.ones(b, t, 1, device=hidden.device, dtype=hidden.dtype)
    if time_share > 0:
        lengths = mask.sum(1)
        n_spans = (lengths * time_share / span).round().long()
        for i in range(b):
            for start in torch.randint(0, max(int(lengths[i]) - span, 1), (int(n_spans[i]),)).tolist():
                keep[i, start:start + span] = 0
    if channel_share > 0:
        channels = (torch.rand(b, 1, d, device=hidden.device) >= channel_share).to(hidden.dtype)
        keep = keep * channels
    return hidden * keep


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """The usual 2-layer projector (SLAM-ASR, LLaVA): Linear → GELU → Linear."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class Attention(nn.Module):
    """Multi-head attention; ``mask`` is bool, broadcastable to [B, H, T_q, T_k], True = may attend."""

    def __init__(self, d_model: int, n_heads: int, d_kv: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_kv or d_model, d_model)
        self.value = nn.Linear(d_kv or d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:  # a row with nothing to attend to would give NaN: let it see all
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(memory)), self._heads(self.value(memory))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(2))


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer encoder block with a key-padding mask."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int):
        super().__init__()
        self.attn_ln, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.mlp_ln, self.mlp = nn.LayerNorm(d_model), mlp(d_model, d_ffn, d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.attn_ln(x)
        x = x + self.attn(h, h, mask[:, None, None, :])
        return x + self.mlp(self.mlp_ln(x))
