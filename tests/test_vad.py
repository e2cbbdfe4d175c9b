from pathlib import Path

import numpy as np
import pytest

from speechllm.audio import load_audio
from speechllm.zoo import ZOO

pytestmark = pytest.mark.skipif(ZOO["silero-vad"].bundle.folder() is None, reason="silero-vad not installed")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SR = 16_000


@pytest.fixture(scope="module")
def vad():
    from speechllm.vad import SileroVAD

    return SileroVAD()


def recording(repeats: int, lead: float = 5.0, gap: float = 1.0, tail: float = 8.0):
    """Example clips separated by silences; returns the audio and each clip's (start, end)."""
    parts, spans, t = [np.zeros(int(lead * SR), np.float32)], [], int(lead * SR)
    for _ in range(repeats):
        for clip in sorted(EXAMPLES.glob("*.flac")):
            audio = load_audio(clip)
            parts += [audio, np.zeros(int(gap * SR), np.float32)]
            spans.append((t, t + len(audio)))
            t += len(audio) + int(gap * SR)
    parts.append(np.zeros(int(tail * SR), np.float32))
    return np.concatenate(parts), spans


def test_segments_cover_all_speech_and_skip_silence(vad):
    from speechllm.vad import vad_segments

    audio, spans = recording(5)
    segments = list(vad_segments([audio], vad))
    assert len(segments) >= 3
    assert all(len(s.audio) <= 30 * SR for s in segments)
    assert segments[0].start > 4 * SR  # leading silence skipped
    assert segments[-1].end < len(audio) - 6 * SR  # trailing silence skipped
    for start, end in spans:  # each clip lies inside one segment: no word is cut
        inside = [s for s in segments if s.start <= start + 1600 and end - 1600 <= s.end]
        assert inside, f"speech {start / SR:.1f}-{end / SR:.1f}s not covered"
    for s in segments:
        assert np.array_equal(s.audio, audio[s.start : s.end])


def test_streaming_blocks_give_the_same_segments(vad):
    from speechllm.vad import vad_segments

    audio, _ = recording(3)
    whole = [(s.start, s.end) for s in vad_segments([audio], vad)]
    streamed = [(s.start, s.end) for s in vad_segments(np.array_split(audio, 37), vad)]
    assert whole == streamed


def test_silence_only_gives_no_segments(vad):
    from speechllm.vad import vad_segments

    assert list(vad_segments([np.zeros(SR * 40, np.float32)], vad)) == []
