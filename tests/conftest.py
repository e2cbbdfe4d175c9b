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
    import json

    import torch

    from speechllm.speechlm.io import atomic_save_tensors

    cache.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for split in ("train", "dev"):
        frames = [50, 70, 60]
        enc = [torch.randn(n, 384, generator=rng).half() for n in frames]
        mel = [(torch.randn(n, 80, generator=rng) - 5).half() for n in frames]
        wav = [(torch.randn(n * 320, generator=rng) * 3000).short() for n in frames]
        off = lambda xs: torch.tensor([0] + np.cumsum([len(x) for x in xs]).tolist())  # noqa: E731
        rows = [{"id": f"{split}{i}", "text": t, "speaker": "piper:joe"}
                for i, t in enumerate(("hello world", "the weather is fine", "a quick brown fox"))]
        atomic_save_tensors({"enc": torch.cat(enc), "enc_off": off(enc), "mel": torch.cat(mel),
                             "mel_off": off(mel), "wav": torch.cat(wav), "wav_off": off(wav)},
                            cache / f"{split}-000.safetensors", {"rows": json.dumps(rows)})
    return cache
