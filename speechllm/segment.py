"""Cutting long audio into model-sized segments without losing a sample.

Segments end at the quietest short frame in the last part of each window, so cuts tend to
fall between words; the segments tile the input exactly (nothing dropped, nothing repeated).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from speechllm.audio import SAMPLE_RATE


@dataclass(frozen=True)
class AudioSegment:
    start: int  # sample offsets into the whole recording
    end: int
    audio: np.ndarray

    def seconds(self, sample_rate: int = SAMPLE_RATE) -> tuple[float, float]:
        return self.start / sample_rate, self.end / sample_rate


def quietest_cut(audio: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """Sample index in [lo, hi) at the centre of the lowest-energy frame."""
    region = audio[lo:hi]
    n = len(region) // frame
    if n < 2:
        return hi
    energy = (region[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def segment_stream(
    blocks: Iterable[np.ndarray],
    max_seconds: float = 30.0,
    search_seconds: float = 8.0,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[AudioSegment]:
    """Turn a stream of audio blocks into segments of at most ``max_seconds``."""
    max_len = int(max_seconds * sample_rate)
    search = min(int(search_seconds * sample_rate), max_len // 2)
    frame = sample_rate // 20  # 50 ms
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        while len(buffer) > max_len:
            cut = quietest_cut(buffer, max_len - search, max_len, frame)
            yield AudioSegment(offset, offset + cut, buffer[:cut])
            buffer, offset = buffer[cut:], offset + cut
    if len(buffer):
        yield AudioSegment(offset, offset + len(buffer), buffer)


def segment_audio(audio: np.ndarray, max_seconds: float = 30.0,
                  sample_rate: int = SAMPLE_RATE) -> list[AudioSegment]:
    return list(segment_stream([audio], max_seconds, sample_rate=sample_rate))
