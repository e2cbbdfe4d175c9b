"""Mel → waveform: a small causal Vocos (Siuzdak, 2023) and a Griffin-Lim fallback.

    log-mel [B, 80, T] ─► causal conv ─► N causal ConvNeXt blocks ─► linear ─► |S|, ∠S per frame
    ─► inverse STFT ("same" padding: T frames → T * hop samples)

Every convolution looks only left, so a frame's spectrum depends on the last
``receptive_field`` mel frames and nothing later; :class:`VocoderStream` keeps that much mel as
context and overlap-adds frames as they come, which gives exactly the samples of
:meth:`Vocos.forward` on the whole mel, chunk by chunk, ``(n_fft - hop) / 2`` samples behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.tts.mel import MelConfig, mel_spectrogram


@dataclass(frozen=True)
class VocoderConfig:
    n_mels: int = 80
    dim: int = 192
    ffn: int = 576
    n_layers: int = 6
    kernel: int = 7
    n_fft: int = 1280
    hop: int = 320
    sample_rate: int = 16_000

    @property
    def receptive_field(self) -> int:
        """Mel frames of left context a frame's output depends on (besides itself)."""
        return (self.n_layers + 1) * (self.kernel - 1)


class CausalConv(nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, ffn: int, kernel: int):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, ffn)
        self.down = nn.Linear(ffn, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor) -> Tensor:  # [B, D, T]
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.down(F.gelu(self.up(y))) * self.gamma
        return x + y.transpose(1, 2)


def istft_same(spec: Tensor, n_fft: int, hop: int) -> Tensor:
    """Complex [B, n_fft/2+1, T] → [B, T * hop]: windowed overlap-add, (n_fft - hop)/2 trimmed each side."""
    window = torch.hann_window(n_fft, device=spec.device)
    frames = torch.fft.irfft(spec, n_fft, dim=1) * window[None, :, None]  # [B, n_fft, T]
    n = spec.shape[-1]
    size = (n - 1) * hop + n_fft
    fold = lambda x: F.fold(x, (1, size), (1, n_fft), stride=(1, hop))[:, 0, 0]  # noqa: E731
    y = fold(frames)
    envelope = fold(window.square()[None, :, None].expand(1, -1, n))
    pad = (n_fft - hop) // 2
    return y[:, pad:size - pad] / envelope[:, pad:size - pad].clamp(min=1e-8)


class StreamingISTFT:
    """The same overlap-add as :func:`istft_same`, frame chunk by frame chunk.

    After frames 0..t-1, every output sample before ``t * hop - pad`` is final (frame t starts
    there), so :meth:`push` returns the samples up to that point and :meth:`flush` the rest.
    """

    def __init__(self, n_fft: int, hop: int):
        self.n_fft, self.hop, self.pad = n_fft, hop, (n_fft - hop) // 2
        self.window = torch.hann_window(n_fft)
        self.acc = torch.zeros(0)
        self.env = torch.zeros(0)
        self.base = 0  # padded-coordinate index of acc[0]
        self.frames = 0

    def push(self, spec: Tensor) -> Tensor:
        """Complex [n_fft/2+1, T] → the newly final samples."""
        frames = torch.fft.irfft(spec, self.n_fft, dim=0) * self.window[:, None]
        end = (self.frames + spec.shape[1] - 1) * self.hop + self.n_fft
        grow = end - self.base - len(self.acc)
        self.acc = torch.cat([self.acc, torch.zeros(grow)])
        self.env = torch.cat([self.env, torch.zeros(grow)])
        w2 = self.window.square()
        for j in range(spec.shape[1]):
            start = (self.frames + j) * self.hop - self.base
            self.acc[start:start + self.n_fft] += frames[:, j]
            self.env[start:start + self.n_fft] += w2
        self.frames += spec.shape[1]
        return self._emit(self.frames * self.hop)

    def flush(self) -> Tensor:
        return self._emit(self.frames * self.hop + self.pad)

    def _emit(self, upto: int) -> Tensor:
        """Samples in padded coordinates [max(base, pad), upto), normalised, then dropped from the buffer."""
        first = max(self.base, self.pad)
        if upto <= first:
            return torch.zeros(0)
        a, b = first - self.base, upto - self.base
        out = self.acc[a:b] / self.env[a:b].clamp(min=1e-8)
        self.acc, self.env, self.base = self.acc[b:], self.env[b:], upto
        return out


class Vocos(nn.Module):
    def __init__(self, config: VocoderConfig = VocoderConfig()):
        super().__init__()
        self.config = c = config
        self.embed = CausalConv(c.n_mels, c.dim, c.kernel)
        self.norm = nn.LayerNorm(c.dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.ffn, c.kernel) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.n_fft + 2)

    def spectrum(self, mel: Tensor) -> Tensor:
        """log-mel [B, n_mels, T] → complex spectrum [B, n_fft/2+1, T]."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        mag, phase = self.head(self.norm_out(x.transpose(1, 2))).transpose(1, 2).chunk(2, dim=1)
        mag = torch.exp(mag).clamp(max=100.0)
        return torch.polar(mag, phase)

    def forward(self, mel: Tensor) -> Tensor:
        """[B, n_mels, T] → waveform [B, T * hop]."""
        return istft_same(self.spectrum(mel), self.config.n_fft, self.config.hop).clamp(-1, 1)

    def stream(self) -> VocoderStream:
        return VocoderStream(self)


class VocoderStream:
    """Feed mel chunks, get the final audio for them; ``flush`` at the end of the utterance."""

    def __init__(self, vocoder: Vocos):
        self.vocoder = vocoder
        self.context = torch.zeros(vocoder.config.n_mels, 0)
        self.istft = StreamingISTFT(vocoder.config.n_fft, vocoder.config.hop)

    @torch.no_grad()
    def push(self, mel: Tensor) -> Tensor:
        """log-mel [n_mels, n] → float32 samples."""
        if mel.shape[-1] == 0:
            return torch.zeros(0)
        x = torch.cat([self.context, mel], dim=1)
        spec = self.vocoder.spectrum(x[None])[0, :, -mel.shape[1]:]
        self.context = x[:, -self.vocoder.config.receptive_field:]
        return self.istft.push(spec).clamp(-1, 1)

    def flush(self) -> Tensor:
        return self.istft.flush().clamp(-1, 1)


# ---------------------------------------------------------------- fallback


class GriffinLim(nn.Module):
    """No weights: mel → linear magnitude (least squares) → Griffin-Lim phase (``iters`` rounds)."""

    def __init__(self, mel_config: MelConfig | None = None, iters: int = 32):
        super().__init__()
        from speechllm.features import mel_filters

        self.mel_config = mel_config = mel_config or MelConfig()
        self.iters = iters
        filters = torch.from_numpy(mel_filters(mel_config.n_mels, mel_config.sample_rate, mel_config.n_fft))
        self.register_buffer("inverse", torch.linalg.pinv(filters.float().T), persistent=False)

    @torch.no_grad()
    def forward(self, mel: Tensor) -> Tensor:
        c = self.mel_config
        mag = (self.inverse @ mel.exp()).clamp(min=0)  # [B, F, T]
        mag = F.pad(mag, (0, 1))  # the frame the mel drops
        window = torch.hann_window(c.n_fft)
        length = (mel.shape[-1]) * c.hop
        angles = torch.exp(2j * torch.pi * torch.rand(mag.shape, generator=torch.Generator().manual_seed(0)))
        for _ in range(self.iters):
            audio = torch.istft(mag * angles, c.n_fft, c.hop, window=window, length=length)
            spec = torch.stft(audio, c.n_fft, c.hop, window=window, return_complex=True)
            angles = torch.exp(1j * spec.angle())
        audio = torch.istft(mag * angles, c.n_fft, c.hop, window=window, length=length)
        return audio.clamp(-1, 1)


# ---------------------------------------------------------------- training loss


def _stft_mag(x: Tensor, n_fft: int, hop: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-5)


def vocoder_loss(pred: Tensor, target: Tensor, mel_config: MelConfig | None = None) -> tuple[Tensor, dict]:
    """Log-mel L1 + multi-resolution STFT (spectral convergence + log magnitude)."""
    mel_config = mel_config or MelConfig()
    mel = F.l1_loss(mel_spectrogram(pred, mel_config), mel_spectrogram(target, mel_config))
    stft = 0.0
    for n_fft, hop in ((256, 64), (512, 128), (1024, 256), (2048, 512)):
        p, t = _stft_mag(pred, n_fft, hop), _stft_mag(target, n_fft, hop)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t)
        stft = stft + sc + F.l1_loss(p.log(), t.log())
    stft = stft / 4
    return 2.0 * mel + stft, {"mel_l1": float(mel.detach()), "stft": float(stft.detach())}


VOCODERS: dict[str, Callable[..., nn.Module]] = {
    "vocos": lambda config=None: Vocos(config or VocoderConfig()),
    "griffin-lim": lambda config=None: GriffinLim(),
}
