import shutil

import numpy as np
import pytest

SR = 16_000


def tone(seconds: float, sr: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def make_tone():
    return tone


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: torch threads only add overhead (and the CI machine has 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_tts_cache():
    """Writes a tiny TTS feature cache into a folder (the fixture's value is that function)."""
    return write_fake_tts_cache


def write_fake_tts_cache(cache):
    """A tiny TTS feature cache (what ``speechllm.tts.train --stage cache`` writes): random Whisper
    frames, mels and audio for 3 train and 3 dev utterances of one Piper speaker."""
    from speechllm.tts.data import write_random_cache

    texts = ["hello world", "the weather is fine", "a quick brown fox"]
    return write_random_cache(cache, [50, 70, 60], texts)
