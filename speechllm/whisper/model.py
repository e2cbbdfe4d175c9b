"""Whisper (Radford et al., 2022) in one file: config → layers → encoder → decoder → model.

Differences from openai/whisper's model.py, none of which change the maths:

* the encoder takes variable-length log-mel input plus per-item lengths, so a batch of short
  clips costs in proportion to their length, and padded frames never touch valid ones;
* the decoder keeps an explicit :class:`KVCache` (self-attention grows per step, cross-attention
  is computed once) that beam search can reorder;
* attention is ``F.scaled_dot_product_attention``.

Parameter names follow openai/whisper; ``weights.py`` maps Hugging Face and CTranslate2 names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WhisperConfig:
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder positions = mel frames / 2
    d_model: int = 384
    n_heads: int = 6
    n_encoder_layers: int = 4
    n_decoder_layers: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448
    d_ffn: int = 1536

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865  # openai/whisper's rule


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class KVCache:
    """Decoder keys/values per layer, shaped [batch, heads, time, head_dim].

    Self-attention entries grow by the tokens fed at each step; cross-attention entries are
    computed from the audio on the first step and reused. :meth:`reorder` picks batch rows for
    beam search; it leaves cross-attention alone because a beam never moves to another audio
    item, so rows of one item share the same cross keys/values.
    """

    def __init__(self) -> None:
        self.self_kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.cross_kv: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def length(self) -> int:
        return next(iter(self.self_kv.values()))[0].shape[2] if self.self_kv else 0

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.self_kv:
            past_k, past_v = self.self_kv[layer]
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.self_kv[layer] = (k, v)
        return k, v

    def reorder(self, index: Tensor) -> None:
        for layer, (k, v) in self.self_kv.items():
            self.self_kv[layer] = (k.index_select(0, index), v.index_select(0, index))


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, D/H]
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._heads(self.key(x)), self._heads(self.value(x))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                scores: list[Tensor] | None = None) -> Tensor:
        """mask: bool, broadcastable to [B, H, T_q, T_k], True where attention is allowed.

        With ``scores`` (a list), the attention is computed step by step and its pre-softmax
        scores [B, H, T_q, T_k] are appended to it (word timestamps read the cross-attention).
        """
        q = self._heads(self.query(x))
        if scores is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            qk = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
            if mask is not None:
                qk = qk.masked_fill(~mask, float("-inf"))
            scores.append(qk)
            out = qk.softmax(dim=-1).to(v.dtype) @ v
        return self.out(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ffn: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.attn_ln = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(d_model) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Linear(d_ffn, d_model))
        self.mlp_ln = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None, audio: Tensor | None = None,
                audio_mask: Tensor | None = None, cache: KVCache | None = None, layer: int = 0,
                cross_scores: list[Tensor] | None = None) -> Tensor:
        h = self.attn_ln(x)
        k, v = self.attn.keys_values(h)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        x = x + self.attn(h, k, v, mask)
        if self.cross_attn is not None:
            if cache is not None and layer in cache.cross_kv:
                k, v = cache.cross_kv[layer]
            else:
                k, v = self.cross_attn.keys_values(audio)
                if cache is not None:
                    cache.cross_kv[layer] = (k, v)
            x = x + self.cross_attn(self.cross_attn_ln(x), k, v, audio_mask, cross_scores)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv1d(config.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_audio_ctx, d))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(d, config.n_heads, config.d_ffn) for _ in range(config.n_encoder_layers)
        )
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor, mel_lengths: Tensor | None = None,
                skip_top: int = 0) -> tuple[Tensor, Tensor]:
        """mel [B, n_mels, T] (any T up to 2 x n_audio_ctx), mel_lengths [B] valid frames.

        Returns ``(hidden [B, T', D], mask [B, T'])`` with T' = ceil(T / 2) and mask True on
        valid positions; hidden is zero elsewhere. Each item's valid outputs equal those of
        running it alone, whatever the padding holds. ``skip_top`` > 0 stops below the top
        ``skip_top`` blocks (no final norm): :meth:`finish` runs the rest.
        """
        batch, _, n_frames = mel.shape
        if n_frames > 2 * self.positional_embedding.shape[0]:
            raise ValueError(f"mel has {n_frames} frames; this encoder takes at most "
                             f"{2 * self.positional_embedding.shape[0]} (30 s)")
        if mel_lengths is None:
            mel_lengths = torch.full((batch,), n_frames, device=mel.device)
        mel_lengths = mel_lengths.to(mel.device)
        valid = (torch.arange(n_frames, device=mel.device) < mel_lengths[:, None])[:, None, :]
        # zero past each length, so the convolutions see what they would see on the item alone
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype) * valid)) * valid
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        out_lengths = torch.div(mel_lengths + 1, 2, rounding_mode="floor")  # conv2 has stride 2
        mask = torch.arange(x.shape[1], device=x.device) < out_lengths[:, None]
        x = self._blocks(x + self.positional_embedding[: x.shape[1]], mask, 0, len(self.blocks) - skip_top)
        if skip_top:
            return x * mask[..., None], mask
        return self.ln_post(x) * mask[..., None], mask

    def finish(self, x: Tensor, mask: Tensor, top: int) -> tuple[Tensor, Tensor]:
        """The top ``top`` blocks and the final norm over ``forward(..., skip_top=top)``'s output."""
        x = self._blocks(x, mask, len(self.blocks) - top, len(self.blocks))
        return self.ln_post(x) * mask[..., None], mask

    def _blocks(self, x: Tensor, mask: Tensor, first: int, end: int) -> Tensor:
        attn_mask = None if bool(mask.all()) else mask[:, None, None, :]
        for block in self.blocks[first:end]:
            x = block(x, attn_mask)
        return x


class TextDecoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.token_embedding = nn.Embedding(config.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.empty(config.n_text_ctx, d).normal_(std=0.01))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(d, config.n_heads, config.d_ffn, cross_attention=True)
            for _ in range(config.n_decoder_layers)
        )
        self.ln = nn.LayerNorm(d)
        self._output: tuple[tuple, Tensor] | None = None  # (weights version, the output layer [D, V])

    def forward(self, tokens: Tensor, audio: Tensor, audio_mask: Tensor | None = None,
                cache: KVCache | None = None, cross_scores: list[Tensor] | None = None) -> Tensor:
        """tokens [B, n] (only the new ones when a cache is given), audio [B, T', D] → logits [B, n, V].

        audio_mask [B, T'] is the encoder's mask (True = valid). Audio is read once per cache.
        ``cross_scores``, when a list, receives each layer's cross-attention scores [B, H, n, T']
        (before the softmax), bottom layer first.
        """
        offset = cache.length if cache is not None else 0
        n = tokens.shape[1]
        if offset + n > self.positional_embedding.shape[0]:
            raise ValueError(f"{offset + n} tokens exceed the decoder's {self.positional_embedding.shape[0]}")
        x = self.token_embedding(tokens) + self.positional_embedding[offset : offset + n]
        causal = None
        if n > 1:  # token i sees the cache and new tokens up to itself
            causal = torch.ones(n, offset + n, dtype=torch.bool, device=tokens.device).tril(offset)
        cross_mask = None if audio_mask is None else audio_mask[:, None, None, :]
        for layer, block in enumerate(self.blocks):
            x = block(x, causal, audio, cross_mask, cache, layer, cross_scores)
        return (self.ln(x) @ self.output_weight()).float()

    def output_weight(self) -> Tensor:
        """The output layer: the token embedding transposed ([D, V]). On a CPU, without gradients, a
        contiguous copy of it, made once per version of the weights: MKL's product of a few rows with
        the [V, D] embedding's transpose reads it at a third of the speed (tiny.en, 2 threads: 7.6 ms a
        row against 2.9 ms; 2 rows 18 against 5.8 ms), and decoding is one such product a token. The
        copy costs the embedding's size again (80 MB for tiny.en, 106 MB for base)."""
        weight = self.token_embedding.weight
        if weight.device.type != "cpu" or torch.is_grad_enabled():  # a copy made in inference mode
            return weight.T  # must not meet autograd, even with the embedding frozen
        version = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
        if self._output is None or self._output[0] != version:
            self._output = (version, weight.detach().T.contiguous())
        return self._output[1]


class Whisper(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        # decoder (layer, head) pairs whose cross-attention follows the speech (word timestamps);
        # None: the known table by shape, else the top half (see timing.py)
        self.alignment_heads: tuple[tuple[int, int], ...] | None = None
        self.encoder = AudioEncoder(config)
        self.decoder = TextDecoder(config)

    @property
    def device(self) -> torch.device:
        return self.decoder.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.token_embedding.weight.dtype

    def forward(self, mel: Tensor, tokens: Tensor, mel_lengths: Tensor | None = None) -> Tensor:
        audio, mask = self.encoder(mel, mel_lengths)
        return self.decoder(tokens, audio, mask)
