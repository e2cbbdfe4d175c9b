"""Audio input: any file libsndfile reads, any rate and channel count -> float32 mono 16 kHz.

Every failure is an :class:`AudioError` whose message names the file and the reason, so a
batch job can record it on one line and go on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechllm.limits import MIN_SAMPLE_RATE

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """A file that cannot be used as speech input (unreadable, empty, non-finite, too long)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _soundfile():
    import soundfile

    return soundfile


def check_audio_file(path: str | Path):
    """The header as libsndfile reads it (``soundfile.info``), or an :class:`AudioError` saying why
    the file is no usable recording: missing, a folder, empty, not audio, a sample rate no speech
    recording has. Cheap (the samples are not decoded): front ends call it before loading a model."""
    path = Path(path)
    if not path.exists():
        parent = next((p for p in path.parents if p.is_file()), None)
        raise AudioError(path, f"{parent} is a file, not a folder" if parent else "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")
    if path.suffix.lower() == ".mp3" and not _looks_like_mp3(path):
        # libmpg123 would print its resync notes straight to the terminal before failing
        raise AudioError(path, f"{NOT_AUDIO} (no MP3 frame or ID3 header)")
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile's messages are cryptic; keep them but name the file
        raise AudioError(path, _unreadable(exc)) from None
    if info.samplerate < MIN_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {info.samplerate} Hz in its header: no speech recording is "
                               f"below {MIN_SAMPLE_RATE:,} Hz (a damaged or mislabelled file)")
    return info


def _looks_like_mp3(path: Path) -> bool:
    """An ID3 tag, or an MPEG frame sync in the first 64 KiB (text and other formats have none)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return head.startswith(b"ID3") or re.search(rb"\xff[\xe0-\xff]", head) is not None


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts (rate, channels, length) without decoding the samples."""
    path = Path(path)
    info = check_audio_file(path)
    sf = _soundfile()
    frames = int(info.frames)
    if frames < 0 or frames > 2**62:  # some mp3/ogg headers do not know their length
        try:
            frames = sum(len(b) for b in sf.blocks(str(path), blocksize=1 << 16))
        except Exception as exc:
            raise AudioError(path, _unreadable(exc)) from None
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), frames, str(info.format))


NOT_AUDIO = "unreadable audio: not a readable audio file"


def _unreadable(exc: Exception) -> str:
    """libsndfile's failure as a reason: "format not recognised" (code 1) and "possibly a pipe?"
    (7: what it says of a .mp3 holding anything else) both mean the file is no audio it knows."""
    if getattr(exc, "code", None) in (1, 7):
        return f"{NOT_AUDIO} (format not recognised)"
    detail = getattr(exc, "error_string", "")  # without libsndfile's "Error opening 'PATH': " prefix
    return f"unreadable audio ({detail.strip()[:200] if detail.strip() else _short(exc)})"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates already match."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def _to_mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block.astype(np.float32)


def _check_finite(path: str | Path, audio: np.ndarray) -> None:
    if not np.isfinite(audio).all():
        raise AudioError(path, "audio contains NaN or Inf samples")


def load_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, max_duration: float | None = None
) -> np.ndarray:
    """Decode a whole file to float32 mono at ``sample_rate``.

    ``max_duration`` (seconds) refuses longer files up front, before decoding; use
    :func:`stream_audio` to walk through long recordings block by block instead.
    """
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples (0 s)")
    if max_duration is not None and info.duration > max_duration:
        raise AudioError(path, f"{info.duration:.1f} s is over the limit of {max_duration:g} s")
    sf = _soundfile()
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    audio = _to_mono(data)
    if audio.size == 0:
        raise AudioError(path, "no audio samples (0 s)")
    _check_finite(path, audio)
    return resample(audio, sr, sample_rate)


def stream_audio(
    path: str | Path, block_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Yield consecutive float32 mono blocks of about ``block_seconds`` at ``sample_rate``.

    Memory stays bounded for hour-long files; the concatenated blocks equal the whole
    resampled file (soxr's streaming resampler keeps its state across blocks).
    """
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "no audio samples (0 s)")
    import soxr

    sf = _soundfile()
    stream = None
    if info.sample_rate != sample_rate:
        stream = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    blocksize = max(1, int(block_seconds * info.sample_rate))
    try:
        blocks = sf.blocks(str(path), blocksize=blocksize, dtype="float32", always_2d=True)
        for block in blocks:
            mono = _to_mono(block)
            _check_finite(path, mono)
            out = stream.resample_chunk(mono) if stream is not None else mono
            if out.size:
                yield out
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write atomically (temp file + rename); the format follows the suffix (.wav, .flac, .ogg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf = _soundfile()
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    try:
        sf.write(str(tmp), np.asarray(audio, dtype=np.float32), sample_rate, format=fmt)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
