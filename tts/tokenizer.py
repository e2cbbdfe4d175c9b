"""Supervised semantic speech tokens (CosyVoice 2's S3 tokenizer, small): Whisper encoder → 25 Hz
→ finite scalar quantization (FSQ) → CTC on characters, so the tokens must carry the words.

    whisper encoder [B, T50, 384] (frozen, precomputed) ─► pool 2 frames ─► linear ─► pre blocks
    ─► FSQ (project to len(levels) dims, bound with tanh, round; straight-through) = token ids
    ─► post blocks ─► CTC head (characters)

FSQ (Mentzer et al., 2023) has no codebook to collapse: a token id is the mixed-radix number of
the rounded coordinates, and every id decodes back to its coordinates (``codes`` ↔ ``indices``).
Synthesis never runs the tokenizer: it makes the training targets of the LM and the flow model
from audio (and a speaker prompt's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.tts.data import CHARS


@dataclass(frozen=True)
class TokenizerConfig:
    d_in: int = 384  # Whisper tiny encoder width
    pool: int = 2  # 50 Hz encoder frames per token (25 Hz tokens)
    d_model: int = 192
    n_heads: int = 4
    n_pre: int = 1
    n_post: int = 2
    levels: tuple[int, ...] = (8, 5, 5, 5)  # 1000 tokens
    n_chars: int = len(CHARS) + 1  # + CTC blank
    recon_weight: float = 0.0  # > 0: also predict the mel from the tokens (acoustic detail in the tokens)
    n_mels: int = 80
    mel_mean: float = -5.0  # normalisation of the reconstructed log-mel
    mel_std: float = 2.5

    @property
    def n_tokens(self) -> int:
        return math.prod(self.levels)


class FSQ(nn.Module):
    """Finite scalar quantizer over ``len(levels)`` dims (without the projections around it)."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1])), 0)
        self.register_buffer("basis", basis, persistent=False)

    def quantize(self, z: Tensor) -> Tensor:
        """z [..., d] (any real) -> codes on each dim's grid in [-1, 1]; gradients pass straight through."""
        half = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        bounded = torch.tanh(z + torch.atanh(offset / half)) * half - offset
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / (self.levels // 2)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        width = self.levels // 2
        digits = (codes * width + width).round().long()  # 0 .. level - 1
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        width = self.levels // 2
        digits = (indices[..., None] // self.basis) % self.levels
        return (digits - width) / width


class Block(nn.Module):
    """Pre-norm transformer layer with a key padding mask."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, n_heads, 4 * d, dropout=0.1, batch_first=True,
                                                norm_first=True, activation="gelu")

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.layer(x, src_key_padding_mask=~mask)


class SpeechTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        self.config = c = config
        self.proj_in = nn.Linear(c.d_in * c.pool, c.d_model)
        self.pre = nn.ModuleList(Block(c.d_model, c.n_heads) for _ in range(c.n_pre))
        self.to_fsq = nn.Linear(c.d_model, len(c.levels))
        self.fsq = FSQ(c.levels)
        self.from_fsq = nn.Linear(len(c.levels), c.d_model)
        self.post = nn.ModuleList(Block(c.d_model, c.n_heads) for _ in range(c.n_post))
        self.ctc = nn.Linear(c.d_model, c.n_chars)
        self.mel_head = nn.Linear(c.d_model, c.pool * c.n_mels) if c.recon_weight > 0 else None

    def pool(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T50, D] -> [B, ceil(T50 / pool), pool * D] and token lengths."""
        p = self.config.pool
        enc = enc * (torch.arange(enc.shape[1], device=enc.device) < lengths[:, None])[..., None]
        pad = (-enc.shape[1]) % p
        enc = F.pad(enc, (0, 0, 0, pad))
        out_lengths = torch.div(lengths + p - 1, p, rounding_mode="floor")
        return enc.reshape(enc.shape[0], -1, p * enc.shape[2]), out_lengths

    def encode_codes(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, token_lengths = self.pool(enc.float(), lengths)
        mask = torch.arange(x.shape[1], device=x.device) < token_lengths[:, None]
        x = self.proj_in(x)
        for block in self.pre:
            x = block(x, mask)
        return self.fsq.quantize(self.to_fsq(x)), mask

    @torch.no_grad()
    def tokenize(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids [B, T25] (padding -1) and the valid mask."""
        codes, mask = self.encode_codes(enc, lengths)
        return self.fsq.codes_to_indices(codes).masked_fill(~mask, -1), mask

    def decode(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Post-FSQ features [B, T25, d_model], the mask, and the token ids."""
        codes, mask = self.encode_codes(enc, lengths)
        x = self.from_fsq(codes)
        for block in self.post:
            x = block(x, mask)
        return x, mask, self.fsq.codes_to_indices(codes.detach())

    def forward(self, enc: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """CTC log-probs [B, T25, n_chars], the mask, and the token ids."""
        x, mask, ids = self.decode(enc, lengths)
        return self.ctc(x).log_softmax(-1), mask, ids

    def loss(self, enc: Tensor, lengths: Tensor, targets: list[Tensor], mel: Tensor | None = None,
             mel_lengths: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """CTC loss, plus ``recon_weight`` x the MSE of the normalised mel [B, T50, n_mels] predicted
        from the tokens (frames past ``mel_lengths`` and items without mel, length 0, left out)."""
        x, mask, _ = self.decode(enc, lengths)
        ctc = _ctc(self.ctc(x).log_softmax(-1), mask, targets)
        if self.mel_head is None or mel is None or mel_lengths is None:
            return ctc, {"ctc": float(ctc.detach())}
        c = self.config
        pred = self.mel_head(x).unflatten(-1, (c.pool, c.n_mels)).flatten(1, 2)  # [B, T25 * pool, n_mels]
        n = min(pred.shape[1], mel.shape[1])
        frames = torch.arange(n, device=mel.device)
        valid = (frames < mel_lengths[:, None]) & mask.repeat_interleave(c.pool, 1)[:, :n]
        error = ((pred[:, :n] - (mel[:, :n] - c.mel_mean) / c.mel_std) ** 2).mean(-1)
        recon = (error * valid).sum() / valid.sum().clamp(min=1)
        return ctc + c.recon_weight * recon, {"ctc": float(ctc.detach()), "recon": float(recon.detach())}


def _ctc(logp: Tensor, mask: Tensor, targets: list[Tensor]) -> Tensor:
    target_lengths = torch.tensor([len(t) for t in targets])
    return F.ctc_loss(logp.transpose(0, 1), torch.cat(targets), mask.sum(1), target_lengths,
                      blank=0, zero_infinity=True)


def ctc_greedy(logp: Tensor, mask: Tensor) -> list[list[int]]:
    """Best path, repeats merged, blanks dropped."""
    best = logp.argmax(-1)
    out = []
    for row, valid in zip(best, mask, strict=True):
        row = row[valid].tolist()
        out.append([c for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])])
    return out
