"""Whisper log-mel features in torch: CPU or GPU, batched, variable length.

Matches transformers' ``WhisperFeatureExtractor`` (80 slaney mel bins, n_fft 400, hop 160,
log10, dynamic range clamped to 8, scaled to about [-1, 1]) on the same samples, but does not
force 30 s of padding: the dynamic-range clamp uses each item's own valid frames.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

N_FFT = 400
HOP_LENGTH = 160
SAMPLE_RATE = 16_000
N_SAMPLES_30S = 30 * SAMPLE_RATE
N_FRAMES_30S = N_SAMPLES_30S // HOP_LENGTH


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) * logstep
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    log_region = mels >= min_log_mel
    freq[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freq


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style, area-normalised triangular filters, shape [n_freqs, n_mels] (float64)."""
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sample_rate / 2, n_freqs)
    mel_points = np.linspace(_hz_to_mel_slaney(np.array([0.0]))[0],
                             _hz_to_mel_slaney(np.array([sample_rate / 2]))[0], n_mels + 2)
    hz_points = _mel_to_hz_slaney(mel_points)
    diffs = np.diff(hz_points)
    slopes = hz_points[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    enorm = 2.0 / (hz_points[2 : n_mels + 2] - hz_points[:n_mels])
    return filters * enorm[None, :]


def log_mel_spectrogram(
    audio: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | None = None,
    n_mels: int = 80,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of 16 kHz mono audio.

    audio: [T] or [B, T] float32 (padded batch); lengths: valid samples per item (default: all).
    pad_to: pad (never truncate) each item with zeros to this many samples first, e.g.
    ``N_SAMPLES_30S`` to reproduce Whisper's fixed 30 s input.
    Returns ``(mel [B, n_mels, F], frame_lengths [B])``; frames past an item's length are 0.
    """
    audio = torch.as_tensor(audio)
    if audio.dim() == 1:
        audio = audio[None]
    audio = audio.float()
    batch, n_samples = audio.shape
    device = audio.device
    if lengths is None:
        lengths = torch.full((batch,), n_samples, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if pad_to is not None:
        if n_samples < pad_to:
            audio = torch.nn.functional.pad(audio, (0, pad_to - n_samples))
        lengths = torch.clamp(lengths, min=pad_to)
        n_samples = audio.shape[1]
    # Reflect-pad each item at its own end (as the STFT does at the buffer's end) and zero what
    # lies beyond, so a padded batch gives exactly the features of each item run alone.
    ext = N_FFT // 2
    pos = torch.arange(n_samples + ext, device=device)[None, :]
    end = lengths[:, None]
    src = torch.where(pos < end, pos, 2 * (end - 1) - pos).clamp(0, n_samples - 1)
    audio = torch.gather(audio, 1, src.expand(batch, -1)) * (pos < end + ext)

    window = torch.hann_window(N_FFT, device=device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = stft[..., : n_samples // HOP_LENGTH].abs() ** 2  # Whisper drops the last frame
    filters = torch.from_numpy(mel_filters(n_mels)).to(device=device, dtype=torch.float32)
    mel = torch.matmul(filters.T, power)
    log_spec = torch.clamp(mel, min=1e-10).log10()

    frame_lengths = torch.div(lengths, HOP_LENGTH, rounding_mode="floor")
    frame_lengths = torch.clamp(frame_lengths, min=1, max=log_spec.shape[-1])
    valid = torch.arange(log_spec.shape[-1], device=device)[None, :] < frame_lengths[:, None]
    masked = log_spec.masked_fill(~valid[:, None, :], float("-inf"))
    peak = masked.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec * valid[:, None, :], frame_lengths
