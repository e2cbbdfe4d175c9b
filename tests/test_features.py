import numpy as np
import pytest
import torch

from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram, mel_filters


@pytest.fixture(scope="module")
def extractor():
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperFeatureExtractor(feature_size=80)


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (env * (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))).astype(np.float32)


@pytest.mark.parametrize("seconds", [1.0, 7.3, 30.0])
def test_equal_to_transformers_feature_extractor(extractor, seconds):
    audio = speechlike(seconds, seed=int(seconds * 10))
    ref = extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0]
    mel, frames = log_mel_spectrogram(torch.from_numpy(audio), pad_to=N_SAMPLES_30S)
    assert mel.shape == (1, 80, 3000) and int(frames[0]) == 3000
    assert np.abs(mel[0].numpy() - ref).max() < 1e-4


def test_mel_filters_equal_transformers():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0,
                                      max_frequency=8000.0, sampling_rate=16_000, norm="slaney",
                                      mel_scale="slaney")
    assert np.abs(ref - mel_filters(80)).max() < 1e-9


def test_variable_length_batch_equals_items_alone():
    a, b = speechlike(2.0, 1), speechlike(3.5, 2)
    batch = torch.zeros(2, len(b))
    batch[0, : len(a)] = torch.from_numpy(a)
    batch[1] = torch.from_numpy(b)
    mel, frames = log_mel_spectrogram(batch, torch.tensor([len(a), len(b)]))
    assert frames.tolist() == [200, 350]  # 100 frames per second, no 30 s padding
    for i, item in enumerate((a, b)):
        alone, n = log_mel_spectrogram(torch.from_numpy(item))
        assert torch.allclose(mel[i, :, : int(n[0])], alone[0, :, : int(n[0])], atol=1e-5)
    assert torch.all(mel[0, :, 200:] == 0)
