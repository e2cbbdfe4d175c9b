"""Speech tokens → 80-bin mel by conditional flow matching (Lipman et al., 2023; CosyVoice 2),
with chunk-causal attention so one model serves streaming and whole-utterance synthesis.

    frame j (50 Hz; token j // 2):  e[j] = token embedding + sub-frame embedding (j mod 2)
        μ[j] = linear(e[j])  (a per-frame mel estimate, trained with an L2 "prior" loss as in
                              Matcha-TTS: the tokens' content reaches the mel from the first step)
        x_t[j] (80) ⊕ cond[j] (80: prompt mel, else 0) ⊕ μ[j] (80) → linear + e[j] + position
        ─► N transformer blocks (adaLN on the flow time t) ─► velocity [80]

Attention: frames in the speaker prompt see only the prompt; a frame after it sees the prompt,
every earlier chunk and its own chunk (``chunk`` frames; 0 = no chunks, all frames). Training
draws the chunk size at random per batch (CosyVoice 2's chunk masks), so the same weights run
both ways. Synthesis integrates dx/dt = v(x, t) from noise (t=0) to mel (t=1) with a few Euler
steps; streaming runs the steps chunk by chunk with one key/value cache per step, and the
noise of frame j is always row j of one fixed noise bank, so a chunk's mel never depends on later
tokens and streaming gives the same mel as running the same chunks all at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FlowConfig:
    n_tokens: int = 1000
    n_mels: int = 80
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 4
    upsample: int = 2  # mel frames per token
    train_chunks: tuple[int, ...] = (0, 0, 8, 12, 16, 18, 20, 24, 40)  # frames; 0 = full attention
    mel_mean: float = -5.0  # normalisation of the log-mel (set from data when training)
    mel_std: float = 2.5
    noise_frames: int = 6000  # noise bank rows (2 minutes at 50 Hz); longer input wraps around
    prior_weight: float = 1.0  # weight of the L2 loss of μ against the mel
    encoder_layers: int = 0  # chunk-causal transformer layers over the tokens before μ (0: μ per token)
    conv_kernel: int = 0  # > 1: a causal depthwise convolution of this many frames in every block


def sinusoid(x: Tensor, dim: int) -> Tensor:
    """[N] positions or times → [N, dim]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=x.device) / (dim // 2))
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def chunk_ids(n_prompt: int, n_frames: int, chunk: int, device=None) -> Tensor:
    """Chunk index per frame: -1 for the prompt, then 0, 1, ... every ``chunk`` frames (0: one chunk)."""
    j = torch.arange(n_frames, device=device)
    ids = (j - n_prompt) // chunk if chunk > 0 else torch.zeros_like(j)
    return torch.where(j < n_prompt, -1, ids)


def chunk_mask(n_prompt: Tensor, lengths: Tensor, n_frames: int, chunk: int) -> Tensor:
    """[B, 1, T, T] boolean: query i may attend key j (also hides padding keys)."""
    rows = [chunk_ids(int(p), n_frames, chunk, lengths.device) for p in n_prompt]
    ids = torch.stack(rows)
    allowed = ids[:, None, :] <= ids[:, :, None]  # key chunk <= query chunk; the prompt is chunk -1
    keys = torch.arange(n_frames, device=lengths.device)[None, :] < lengths[:, None]
    return (allowed & keys[:, None, :])[:, None]


class CausalConv(nn.Module):
    """Depthwise convolution over frames, causal (frame j sees frames j-k+1..j): the local
    mixing that attention learns slowly (Conformer; CosyVoice 2's causal convolutions). A chunk
    needs only the last k-1 inputs of the frames before it, so streaming stays exact."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.pointwise = nn.Linear(dim, dim)

    def forward(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, T, D]; ``past`` [B, k-1, D] normalised inputs before x (None: zeros).
        Returns the residual update and the last k-1 inputs (the next chunk's ``past``)."""
        h = self.norm(x)
        if past is None:
            past = h.new_zeros(h.shape[0], self.kernel - 1, h.shape[2])
        full = torch.cat([past, h], 1)
        y = self.depthwise(full.transpose(1, 2)).transpose(1, 2)
        return self.pointwise(F.gelu(y)), full[:, full.shape[1] - (self.kernel - 1):]


class Block(nn.Module):
    """Pre-norm attention (+ optional causal convolution) + MLP, with shift/scale/gate from the
    time embedding (DiT adaLN)."""

    def __init__(self, dim: int, n_heads: int, conv_kernel: int = 0):
        super().__init__()
        self.n_heads = n_heads
        self.conv = CausalConv(dim, conv_kernel) if conv_kernel > 1 else None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, temb: Tensor, mask: Tensor | None,
                past: tuple[Tensor, ...] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x [B, T, D]; ``past``: keys/values [B, H, T', d] of the frames before x (and the
        convolution's last inputs); returns x and its own state (k, v[, convolution inputs])."""
        s1, c1, g1, s2, c2, g2 = self.ada(temb)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + c1) + s1
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(b, t, d))
        state: tuple[Tensor, ...] = (k, v)
        if self.conv is not None:
            update, tail = self.conv(x, None if past is None else past[2])
            x = x + update
            state = (k, v, tail)
        x = x + g2 * self.mlp(self.norm2(x) * (1 + c2) + s2)
        return x, state


class FlowMatching(nn.Module):
    def __init__(self, config: FlowConfig = FlowConfig()):
        super().__init__()
        self.config = c = config
        self.token_emb = nn.Embedding(c.n_tokens, c.dim)
        self.subframe_emb = nn.Embedding(c.upsample, c.dim)
        self.encoder = nn.ModuleList(Block(c.dim, c.n_heads, c.conv_kernel) for _ in range(c.encoder_layers))
        self.prior = nn.Linear(c.dim, c.n_mels)
        self.in_proj = nn.Linear(3 * c.n_mels, c.dim)
        self.time_mlp = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.n_heads, c.conv_kernel) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.n_mels)
        bank = torch.randn(c.noise_frames, c.n_mels, generator=torch.Generator().manual_seed(1234))
        self.register_buffer("noise_bank", bank, persistent=False)

    # -- the network
    def encode(self, tokens: Tensor, start: int, mask: Tensor | None = None, cache: list | None = None,
               keep: list | None = None) -> tuple[Tensor, Tensor]:
        """Token features and μ (normalised mel estimate from the tokens alone) for frames from ``start``;
        with encoder layers, chunk-causal like the decoder (``cache``/``keep``: their keys/values)."""
        frames = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        e = self.token_emb(tokens.clamp(min=0)) + self.subframe_emb(frames % self.config.upsample)
        if len(self.encoder):
            e = e + sinusoid(frames, self.config.dim)
            still = torch.zeros(e.shape[0], self.config.dim, device=e.device)
            for i, block in enumerate(self.encoder):
                e, kv = block(e, still, mask, None if cache is None else cache[i])
                if keep is not None:
                    keep.append(kv)
        return e, self.prior(e)

    def join(self, x: Tensor, cond: Tensor, e: Tensor, mu: Tensor, start: int) -> Tensor:
        pos = sinusoid(torch.arange(start, start + x.shape[1], device=x.device), self.config.dim)
        return self.in_proj(torch.cat([x, cond, mu], -1)) + e + pos

    def embed(self, x: Tensor, cond: Tensor, tokens: Tensor, start: int, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
        """x, cond [B, T, 80] (normalised); tokens [B, T] (one per frame); frames start at ``start``.
        Returns the transformer input and μ."""
        e, mu = self.encode(tokens, start, mask)
        return self.join(x, cond, e, mu, start), mu

    def velocity(self, h: Tensor, t: Tensor, mask: Tensor | None, cache: list | None = None,
                 keep: list | None = None) -> Tensor:
        temb = self.time_mlp(sinusoid(t * 1000.0, self.config.dim))
        for i, block in enumerate(self.blocks):
            h, kv = block(h, temb, mask, None if cache is None else cache[i])
            if keep is not None:
                keep.append(kv)
        return self.out(self.norm_out(h))

    def normalize(self, mel: Tensor) -> Tensor:
        return (mel - self.config.mel_mean) / self.config.mel_std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.config.mel_std + self.config.mel_mean

    def frame_tokens(self, tokens: Tensor) -> Tensor:
        return tokens.repeat_interleave(self.config.upsample, dim=-1)

    # -- training
    def loss(self, mel: Tensor, tokens: Tensor, lengths: Tensor, n_prompt: Tensor, chunk: int
             ) -> tuple[Tensor, dict[str, float]]:
        """mel [B, T, 80] raw log-mel, tokens [B, T/upsample], lengths/n_prompt [B] in frames.
        Returns the flow-matching loss + the weighted prior loss, and both as floats."""
        x1 = self.normalize(mel)
        b, n, _ = x1.shape
        frames = torch.arange(n, device=mel.device)[None, :]
        prompt = (frames < n_prompt[:, None])[..., None]
        valid = (frames < lengths[:, None])[..., None]
        t = torch.rand(b, device=mel.device)
        x0 = torch.randn_like(x1)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        xt = torch.where(prompt, x1, xt)
        cond = torch.where(prompt, x1, torch.zeros_like(x1))
        mask = chunk_mask(n_prompt, lengths, n, chunk)
        h, mu = self.embed(xt, cond, self.frame_tokens(tokens)[:, :n], 0, mask)
        v = self.velocity(h, t, mask)
        weight = (valid & ~prompt).float()
        total = (weight.sum() * x1.shape[-1]).clamp(min=1)
        flow = (((v - (x1 - x0)) ** 2) * weight).sum() / total
        prior = (((mu - x1) ** 2) * weight).sum() / total
        parts = {"flow": float(flow.detach()), "prior": float(prior.detach())}
        return flow + self.config.prior_weight * prior, parts

    # -- synthesis
    @staticmethod
    def times(steps: int) -> list[float]:
        return [1 - math.cos(i / steps * math.pi / 2) for i in range(steps + 1)]  # denser near t=0

    @torch.no_grad()
    def encode_prompt(self, prompt_mel: Tensor | None, prompt_tokens: Tensor | None, steps: int
                      ) -> tuple[int, list, list | None]:
        """(prompt frames, per-step decoder key/value caches, encoder caches) of the speaker prompt:
        the same for every sentence of a voice, so computed once per (prompt, steps) and kept."""
        if prompt_mel is None or prompt_tokens is None or prompt_tokens.numel() == 0:
            return 0, [None] * steps, None
        key = (prompt_mel.data_ptr(), tuple(prompt_mel.shape), prompt_tokens.data_ptr(), steps)
        cached = getattr(self, "_prompt_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        c, device = self.config, self.noise_bank.device
        n_prompt = min(prompt_mel.shape[1], len(prompt_tokens) * c.upsample)
        p = self.normalize(prompt_mel.T[:n_prompt].to(device))[None]
        pt = self.frame_tokens(prompt_tokens.to(device))[:n_prompt][None]
        enc_cache: list = []
        e, mu = self.encode(pt, 0, None, None, enc_cache)
        h = self.join(p, p, e, mu, 0)
        caches: list = []
        for t in self.times(steps)[:-1]:
            keep: list = []
            self.velocity(h, torch.tensor([t], device=device), None, None, keep)
            caches.append(keep)
        self._prompt_cache = (key, (n_prompt, caches, enc_cache or None))
        return n_prompt, caches, enc_cache or None

    @torch.no_grad()
    def stream(self, chunks: Iterator[Tensor], prompt_mel: Tensor | None = None,
               prompt_tokens: Tensor | None = None, steps: int = 6) -> Iterator[Tensor]:
        """Token chunks [n] in → log-mel chunks [80, n * upsample] out, each as soon as its tokens are in.

        ``prompt_mel`` [80, P] (raw log-mel) and its ``prompt_tokens`` [P / upsample] set the voice.

        The chunk sizes are the caller's (a streaming policy); one chunk holding every token is
        whole-utterance synthesis with full attention.
        """
        c = self.config
        device = self.noise_bank.device
        n_prompt, caches, enc_cache = self.encode_prompt(prompt_mel, prompt_tokens, steps)
        caches = list(caches)  # this utterance's caches grow; the prompt's stay as they are
        times = self.times(steps)
        pos = n_prompt
        for chunk in chunks:
            if chunk.numel() == 0:
                continue
            ft = self.frame_tokens(chunk.to(device))[None]
            n = ft.shape[1]
            keep_enc: list = []
            e, mu = self.encode(ft, pos, None, enc_cache, keep_enc)
            enc_cache = _grow(enc_cache, keep_enc) if keep_enc else None
            x = self.noise_bank[torch.arange(pos, pos + n, device=device) % c.noise_frames][None]
            zeros = torch.zeros_like(x)
            for i in range(steps):
                keep: list = []
                v = self.velocity(self.join(x, zeros, e, mu, pos), torch.tensor([times[i]], device=device),
                                  None, caches[i], keep)
                caches[i] = _grow(caches[i], keep)
                x = x + (times[i + 1] - times[i]) * v
            pos += n
            yield self.denormalize(x[0]).T

    @torch.no_grad()
    def synthesize(self, tokens: Tensor, prompt_mel: Tensor | None = None,
                   prompt_tokens: Tensor | None = None, steps: int = 6, chunk_tokens: int = 0) -> Tensor:
        """Whole utterance: [n] tokens → log-mel [80, n * upsample] (``chunk_tokens`` 0: full attention)."""
        size = chunk_tokens or max(len(tokens), 1)
        pieces = (tokens[i:i + size] for i in range(0, len(tokens), size))
        out = list(self.stream(pieces, prompt_mel, prompt_tokens, steps))
        return torch.cat(out, dim=1) if out else torch.zeros(self.config.n_mels, 0)


def _grow(past: list | None, new: list) -> list:
    """Per-layer keys/values of earlier frames with this chunk's appended (a convolution's last
    inputs, already joined with the earlier ones by the block, replace the old)."""
    if past is None:
        return new
    pairs = zip(past, new, strict=True)
    return [(torch.cat([old[0], now[0]], 2), torch.cat([old[1], now[1]], 2), *now[2:]) for old, now in pairs]
