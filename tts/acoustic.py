"""The own voice's acoustic model: phoneme ids -> durations -> 80-bin log-mel, learnt from a teacher.

    ids [B, N] ─► embedding + positions ─► encoder (ConvNeXt blocks, then a few attention layers)
        ├─► duration predictor (on the detached encoder): log(1 + mel frames) per id
        └─► upsampling to 50 Hz frames: each frame mixes the ids its 20 ms overlap, by how much of
            it each covers (the teacher's durations in training, predicted ones in synthesis), plus
            where in its id the frame sits ─► decoder (dilated ConvNeXt blocks) ─► normalised mel

FastSpeech's recipe, sized for a CPU: the teacher (:mod:`speechllm.data_recipes.distill`, Piper joe
without sampling noise) gives one deterministic mel and alignment per sentence, so an L1 loss on
the mel and an MSE on log durations are all it takes, with no attention to learn and short
convolutions doing most of the work. Synthesis is one forward pass per sentence (milliseconds);
streaming is the vocoder's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AcousticConfig:
    n_symbols: int = 256  # phoneme id vocabulary (the teacher's id map fits under it)
    dim: int = 192
    encoder_blocks: int = 3
    attention_layers: int = 2
    heads: int = 2
    decoder_dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)
    kernel: int = 5
    duration_channels: int = 192
    n_mels: int = 80


def positions(n: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Sinusoidal position embeddings [n, dim]."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


class ConvBlock(nn.Module):
    """ConvNeXt in 1D: depthwise conv, LayerNorm, 2x MLP, residual; padded positions kept at zero."""

    def __init__(self, dim: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(
            dim, dim, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=dim
        )
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, T, D], mask [B, T] (True = real)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        y = self.down(F.gelu(self.up(self.norm(y))))
        return (x + y) * mask[..., None]


class DurationPredictor(nn.Module):
    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv1d(dim, channels, 3, padding=1), nn.Conv1d(channels, channels, 3, padding=1)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(channels), nn.LayerNorm(channels)])
        self.out = nn.Linear(channels, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:  # -> log(1 + frames) [B, N]
        x = h
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(F.relu(conv((x * mask[..., None]).transpose(1, 2)).transpose(1, 2)))
        return self.out(x).squeeze(-1) * mask


def overlap_weights(durations: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
    """How much of each frame ``t`` ([B, T] frame indices) each id covers ([B, T, N], rows summing to
    1 inside the utterance), and the frame centre's position inside its id (0..1, [B, T])."""
    ends = durations.cumsum(-1)
    starts = ends - durations
    t = frames.float()[..., None]  # [B, T, 1]
    cover = (torch.minimum(t + 1, ends[:, None]) - torch.maximum(t, starts[:, None])).clamp(min=0)
    weights = cover / cover.sum(-1, keepdim=True).clamp(min=1e-6)
    inside = ((t + 0.5 - starts[:, None]) / durations[:, None].clamp(min=1e-3)).clamp(0, 1)
    return weights, (weights * inside).sum(-1)


class AcousticModel(nn.Module):
    def __init__(self, config: AcousticConfig = AcousticConfig()):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.n_symbols, c.dim)
        self.encoder = nn.ModuleList([ConvBlock(c.dim, c.kernel) for _ in range(c.encoder_blocks)])
        self.attention = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    c.dim, c.heads, 2 * c.dim, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(c.attention_layers)
            ]
        )
        self.durations = DurationPredictor(c.dim, c.duration_channels)
        self.frame_in = nn.Linear(c.dim + 2, c.dim)
        self.decoder = nn.ModuleList([ConvBlock(c.dim, c.kernel, d) for d in c.decoder_dilations])
        self.out_norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.n_mels)
        self.register_buffer("mel_mean", torch.zeros(c.n_mels))
        self.register_buffer("mel_std", torch.ones(c.n_mels))

    def set_mel_stats(self, mel_frames: Tensor) -> None:
        """Per-bin mean and spread of the training mels ([frames, n_mels]), the units it predicts in."""
        self.mel_mean.copy_(mel_frames.float().mean(0))
        self.mel_std.copy_(mel_frames.float().std(0).clamp(min=1e-3))

    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = (self.embed(ids) + positions(ids.shape[1], self.config.dim, ids.device)) * mask[..., None]
        for block in self.encoder:
            h = block(h, mask)
        for layer in self.attention:
            h = layer(h, src_key_padding_mask=~mask) * mask[..., None]
        return h

    def decode(self, h: Tensor, durations: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Normalised mel [B, T, n_mels] of the frames ``frames`` [B, T] (a crop or all of them)."""
        weights, inside = overlap_weights(durations, frames)
        x = torch.cat([weights @ h, inside[..., None], torch.log1p(weights @ durations[..., None])], -1)
        x = self.frame_in(x) * frame_mask[..., None]
        for block in self.decoder:
            x = block(x, frame_mask)
        return self.out(self.out_norm(x))

    def loss(
        self, ids: Tensor, id_mask: Tensor, durations: Tensor, frames: Tensor, frame_mask: Tensor, mel: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``durations`` [B, N] the teacher's (mel frames); ``mel`` [B, T, n_mels] log-mel of ``frames``."""
        h = self.encode(ids, id_mask)
        predicted = self.durations(h.detach(), id_mask)
        target = torch.log1p(durations)
        duration_loss = ((predicted - target) ** 2 * id_mask).sum() / id_mask.sum()
        normalised = (mel - self.mel_mean) / self.mel_std
        out = self.decode(h, durations * id_mask, frames, frame_mask)
        mel_loss = ((out - normalised).abs() * frame_mask[..., None]).sum() / (
            frame_mask.sum() * self.config.n_mels
        )
        return mel_loss + duration_loss, {
            "mel_l1": float(mel_loss.detach()),
            "dur_mse": float(duration_loss.detach()),
        }

    def predict_durations(self, ids: Tensor, speed: float = 1.0) -> tuple[Tensor, Tensor]:
        """(encoder states [1, N, D], durations [1, N] in mel frames) of one id sequence [N]."""
        ids = ids[None]
        mask = torch.ones_like(ids, dtype=torch.bool)
        h = self.encode(ids, mask)
        return h, torch.expm1(self.durations(h, mask)).clamp(min=0) / speed

    @torch.no_grad()
    def synthesize(self, ids: Tensor, speed: float = 1.0, durations: Tensor | None = None) -> Tensor:
        """Log-mel [n_mels, T] of one id sequence [N], timed by its own predicted durations (or by
        ``durations`` [N] in mel frames, e.g. the teacher's)."""
        h, predicted = self.predict_durations(ids, speed)
        if durations is None:
            n = max(1, int(round(float(predicted.sum()))))
            durations = predicted * (n / max(float(predicted.sum()), 1e-6))
        else:
            durations = durations.to(h.dtype)[None]
            n = max(1, int(round(float(durations.sum()))))
        frames = torch.arange(n, device=ids.device)[None]
        out = self.decode(h, durations, frames, torch.ones_like(frames, dtype=torch.bool))
        return (out[0] * self.mel_std + self.mel_mean).T
