"""The TTS mel spectrogram: 16 kHz, 80 slaney bins, hop 320 (50 frames/s = 2 per speech token).

One definition shared by the flow-matching model (its target) and the vocoder (its input):
natural-log magnitude mel, floor 1e-5, ``frames = samples // hop`` (the STFT's last, centred
frame is dropped, so ``frames * hop`` samples are exactly what the vocoder gives back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from speechllm.features import mel_filters


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop: int = 320
    n_mels: int = 80

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


def mel_spectrogram(audio: torch.Tensor | np.ndarray, config: MelConfig = MelConfig()) -> torch.Tensor:
    """[T] or [B, T] float audio -> log-mel [B, n_mels, T // hop]."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.dim() == 1:
        audio = audio[None]
    n_frames = audio.shape[-1] // config.hop
    if audio.shape[-1] <= config.n_fft // 2:  # reflect padding needs more samples than half a window
        audio = torch.nn.functional.pad(audio, (0, config.n_fft // 2 + 1 - audio.shape[-1]))
    window = torch.hann_window(config.n_fft, device=audio.device)
    spec = torch.stft(audio, config.n_fft, config.hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)[..., :n_frames].abs()
    filters = torch.from_numpy(mel_filters(config.n_mels, config.sample_rate, config.n_fft))
    mel = torch.matmul(filters.T.to(spec.device, torch.float32), spec)
    return torch.clamp(mel, min=1e-5).log()
