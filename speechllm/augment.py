"""On-the-fly audio augmentation for the training data loader.

Four independent steps, each applied with its own probability, in this order:

1. speed perturbation: resample as if recorded at ``rate * factor`` (tempo and pitch change
   together, as in Kaldi's 0.9/1.0/1.1 recipe); the result has ``len / factor`` samples,
2. room reverb: the signal convolved with a synthetic impulse response (a direct path plus
   exponentially decaying noise with a random RT60), mixed in at a random wet level,
3. additive noise (white, pink or brown) at a random SNR,
4. gain in dB, then a peak limit so nothing clips.

Deterministic for a given :class:`numpy.random.Generator` state. ``augment(audio, rng,
None)`` or a config with ``enabled=False`` returns the audio untouched: use that for
evaluation.

>>> cfg = AugmentConfig()                      # defaults suit synthetic read speech
>>> out = augment(audio, np.random.default_rng(seed), cfg)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechllm.audio import SAMPLE_RATE, resample


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    sample_rate: int = SAMPLE_RATE
    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.15, 0.8)  # seconds for the tail to fall by 60 dB
    reverb_wet_range: tuple[float, float] = (0.2, 0.7)  # share of reverberant energy
    noise_prob: float = 0.5
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    gain_prob: float = 0.5
    gain_db_range: tuple[float, float] = (-10.0, 6.0)
    peak_limit: float = 0.99

    def __post_init__(self) -> None:
        for name in ("speed_prob", "reverb_prob", "noise_prob", "gain_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("speed_range", "rt60_range", "reverb_wet_range", "snr_db_range", "gain_db_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"AugmentConfig.{name} must be (low, high), got {(low, high)}")
        if self.speed_range[0] <= 0:
            raise ValueError("AugmentConfig.speed_range must be positive")
        unknown = set(self.noise_colors) - set(NOISE_COLORS)
        if unknown or not self.noise_colors:
            raise ValueError(
                f"AugmentConfig.noise_colors: unknown {sorted(unknown)} (known: {', '.join(NOISE_COLORS)})"
            )


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``factor`` times faster (and higher): resample from ``rate * factor`` to ``rate``."""
    if abs(factor - 1.0) < 1e-6:
        return audio
    return resample(audio, int(round(sample_rate * factor)), sample_rate)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Direct path, a short pre-delay, then Gaussian noise decaying by 60 dB over ``rt60`` s."""
    length = max(1, int(rt60 * sample_rate))
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 60 dB in amplitude
    predelay = int(rng.uniform(0.002, 0.02) * sample_rate)
    tail[:predelay] = 0.0
    tail /= np.sqrt(np.sum(tail**2)) + 1e-12
    return tail.astype(np.float32)


def _convolve(audio: np.ndarray, ir: np.ndarray) -> np.ndarray:
    n = len(audio) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir, size), size)[: len(audio)]
    return out.astype(np.float32)


def add_reverb(
    audio: np.ndarray, rng: np.random.Generator, rt60: float, wet: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Mix the dry signal with its reverberant copy (same length, same RMS as the input)."""
    tail = _convolve(audio, room_impulse_response(rng, rt60, sample_rate))
    dry_rms, tail_rms = _rms(audio), _rms(tail)
    if tail_rms > 0:
        tail *= dry_rms / tail_rms
    out = np.sqrt(1.0 - wet) * audio + np.sqrt(wet) * tail
    out_rms = _rms(out)
    return out * (dry_rms / out_rms) if out_rms > 0 else out


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n)


def _spectral(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power falling as 1/f**exponent (1: pink, 2: brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


NOISE_COLORS = {
    "white": _white,
    "pink": lambda rng, n: _spectral(rng, n, 1.0),
    "brown": lambda rng, n: _spectral(rng, n, 2.0),
}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float, color: str = "white") -> np.ndarray:
    """Add ``color`` noise scaled so that speech power / noise power = ``snr_db``."""
    signal_rms = _rms(audio)
    if signal_rms == 0.0 or audio.size < 2:
        return audio
    noise = NOISE_COLORS[color](rng, len(audio))
    noise *= signal_rms / (_rms(noise) * 10 ** (snr_db / 20) + 1e-12)
    return (audio + noise).astype(np.float32)


def augment(audio: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None) -> np.ndarray:
    """One random augmentation of 1-D float32 ``audio``; untouched when ``config`` is None or off."""
    audio = np.asarray(audio, dtype=np.float32)
    if config is None or not config.enabled or audio.size == 0:
        return audio
    sr = config.sample_rate
    # Draw every decision up front so each step's randomness does not depend on the others.
    do_speed, do_reverb, do_noise, do_gain = rng.random(4) < (
        config.speed_prob,
        config.reverb_prob,
        config.noise_prob,
        config.gain_prob,
    )
    factor = rng.uniform(*config.speed_range)
    rt60, wet = rng.uniform(*config.rt60_range), rng.uniform(*config.reverb_wet_range)
    snr_db, color = (
        rng.uniform(*config.snr_db_range),
        config.noise_colors[int(rng.integers(len(config.noise_colors)))],
    )
    gain_db = rng.uniform(*config.gain_db_range)
    out = audio
    if do_speed:
        out = speed_perturb(out, factor, sr)
    if do_reverb:
        out = add_reverb(out, rng, rt60, wet, sr)
    if do_noise:
        out = add_noise(out, rng, snr_db, color)
    if do_gain:
        out = out * np.float32(10 ** (gain_db / 20))
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > config.peak_limit:
        out = out * np.float32(config.peak_limit / peak)
    return np.asarray(out, dtype=np.float32)


NO_AUGMENT = AugmentConfig(enabled=False)  # for evaluation loaders
