import numpy as np

from speechllm.segment import segment_audio, segment_stream


def test_segments_tile_the_input_and_respect_the_limit():
    rng = np.random.default_rng(0)
    sr = 16_000
    speech = (0.3 * rng.standard_normal(sr * 95)).astype(np.float32)
    for pause in (22, 47, 70):  # quiet gaps where cuts should land
        speech[pause * sr : pause * sr + sr // 2] *= 0.001
    segments = segment_audio(speech, max_seconds=30)
    assert all(len(s.audio) <= 30 * sr for s in segments)
    assert segments[0].start == 0 and segments[-1].end == len(speech)
    assert all(a.end == b.start for a, b in zip(segments, segments[1:], strict=False))
    assert np.array_equal(np.concatenate([s.audio for s in segments]), speech)
    cuts = [s.end / sr for s in segments[:-1]]
    assert any(22 <= c <= 22.5 for c in cuts)


def test_stream_of_small_blocks_gives_same_segments():
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16_000 * 65)).astype(np.float32)
    whole = segment_audio(audio, max_seconds=30)
    blocks = np.array_split(audio, 40)
    streamed = list(segment_stream(blocks, max_seconds=30))
    assert [(s.start, s.end) for s in whole] == [(s.start, s.end) for s in streamed]
