import numpy as np
import pytest

from speechllm.augment import (
    NO_AUGMENT,
    NOISE_COLORS,
    AugmentConfig,
    add_noise,
    add_reverb,
    augment,
    room_impulse_response,
    speed_perturb,
)

SR = 16_000


@pytest.fixture
def speech():
    """A 1.5 s harmonic 'vowel' with an amplitude envelope: enough structure for the checks."""
    t = np.arange(int(1.5 * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700, 1100), 1))
    return (0.2 * wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_off_for_evaluation(speech):
    rng = np.random.default_rng(0)
    assert np.array_equal(augment(speech, rng, None), speech)
    assert np.array_equal(augment(speech, rng, NO_AUGMENT), speech)
    assert np.array_equal(augment(speech, rng, AugmentConfig(enabled=False)), speech)


def test_deterministic_given_the_generator(speech):
    cfg = AugmentConfig(speed_prob=1, reverb_prob=1, noise_prob=1, gain_prob=1)
    a = augment(speech, np.random.default_rng(7), cfg)
    b = augment(speech, np.random.default_rng(7), cfg)
    c = augment(speech, np.random.default_rng(8), cfg)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[: min(len(a), len(c))], c[: min(len(a), len(c))])
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= cfg.peak_limit + 1e-6


def test_every_step_runs_and_varies(speech):
    cfg = AugmentConfig(speed_prob=1, reverb_prob=1, noise_prob=1, gain_prob=1)
    lengths = {len(augment(speech, np.random.default_rng(s), cfg)) for s in range(10)}
    assert len(lengths) > 5  # speed factors differ
    assert all(len(speech) / 1.1 - 2 <= n <= len(speech) / 0.9 + 2 for n in lengths)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length(speech, factor):
    out = speed_perturb(speech, factor, SR)
    assert abs(len(out) - len(speech) / factor) <= 2
    assert speed_perturb(speech, 1.0, SR) is speech


@pytest.mark.parametrize("color", list(NOISE_COLORS))
@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_at_the_requested_snr(speech, color, snr):
    out = add_noise(speech, np.random.default_rng(1), snr, color)
    measured = 20 * np.log10(_rms(speech) / _rms(out - speech))
    assert abs(measured - snr) < 0.1


def test_reverb_keeps_length_and_level(speech):
    out = add_reverb(speech, np.random.default_rng(2), rt60=0.5, wet=0.5, sample_rate=SR)
    assert len(out) == len(speech)
    assert abs(_rms(out) / _rms(speech) - 1) < 1e-3
    assert not np.allclose(out, speech)
    ir = room_impulse_response(np.random.default_rng(3), rt60=0.4, sample_rate=SR)
    assert len(ir) == int(0.4 * SR)
    head, tail = np.abs(ir[: len(ir) // 8]).max(), np.abs(ir[-len(ir) // 8 :]).max()
    assert tail < head / 100  # decays by more than 40 dB over the last eighth


def test_gain_and_peak_limit(speech):
    loud = AugmentConfig(speed_prob=0, reverb_prob=0, noise_prob=0, gain_prob=1, gain_db_range=(20, 20))
    out = augment(speech, np.random.default_rng(0), loud)
    assert np.abs(out).max() == pytest.approx(loud.peak_limit, rel=1e-5)
    quiet = AugmentConfig(speed_prob=0, reverb_prob=0, noise_prob=0, gain_prob=1, gain_db_range=(-6, -6))
    out = augment(speech, np.random.default_rng(0), quiet)
    assert _rms(out) / _rms(speech) == pytest.approx(10 ** (-6 / 20), rel=1e-4)


def test_empty_and_silent_audio():
    cfg = AugmentConfig(speed_prob=1, reverb_prob=1, noise_prob=1, gain_prob=1)
    assert augment(np.zeros(0, np.float32), np.random.default_rng(0), cfg).size == 0
    silent = augment(np.zeros(SR, np.float32), np.random.default_rng(0), cfg)
    assert np.isfinite(silent).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_prob": 1.5},
        {"speed_range": (1.1, 0.9)},
        {"speed_range": (0.0, 1.0)},
        {"noise_colors": ("blue",)},
    ],
)
def test_config_is_checked(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)
