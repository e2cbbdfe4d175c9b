"""The transcriber's inputs and streaming: (array, rate) and 2-D arrays, segments yielded as their
chunk is decoded, on_segment callbacks, and the batch bar counting seconds of audio."""

import json
from pathlib import Path

import numpy as np
import pytest

from speechllm.audio import AudioError, audio_from_array, resample
from speechllm.transcriber import FixedSegmenter, TranscriptionInfo, WhisperTranscriber
from speechllm.zoo import ZOO

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_arrays_at_any_rate_and_layout_become_16k_mono():
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((44_100, 2))).astype(np.float32)  # 1 s, (samples, channels)
    expected = resample(stereo.mean(axis=1), 44_100)
    assert len(expected) == 16_000
    np.testing.assert_allclose(audio_from_array(stereo, 44_100), expected, atol=1e-6)
    np.testing.assert_allclose(audio_from_array(stereo.T, 44_100), expected, atol=1e-6)  # (channels, samples)
    pcm = np.array([0, 16_384, -32_768], dtype=np.int16)
    np.testing.assert_allclose(audio_from_array(pcm), [0.0, 0.5, -1.0])
    mono = stereo[:, 0]
    assert audio_from_array(mono[:16_000]) is not None and audio_from_array(mono[:16_000]).shape == (16_000,)


@pytest.mark.parametrize(("audio", "rate", "reason"), [
    (np.zeros((2, 3, 4), np.float32), 16_000, "expected a non-empty 1-D or 2-D array"),
    (np.zeros(0, np.float32), 16_000, "expected a non-empty"),
    (np.zeros((100, 100), np.float32), 16_000, "neither axis is a channel axis"),
    (np.zeros(100, np.float32), 16.5, "sampling_rate 16.5: expected an integer rate"),
    (np.zeros(100, np.float32), 100, "sampling_rate 100"),
    (np.array([0.0, np.nan], np.float32), 16_000, "NaN or Inf"),
    (np.array(["a", "b"]), 16_000, "expected an array of numbers"),
])
def test_bad_arrays_are_one_line_errors(audio, rate, reason):
    with pytest.raises(AudioError, match=reason):
        audio_from_array(audio, rate)


class CountingTranscriber(WhisperTranscriber):
    """WhisperTranscriber's batching and streaming with a stand-in decoder: each chunk 'decodes'
    to its length, and every batch is recorded, so laziness can be seen."""

    max_segment_seconds = 1.0

    def __init__(self, batch_size: int = 1):
        self.batch_size, self.segmenter, self.batches = batch_size, FixedSegmenter(), []

    def decode_segments(self, segments):
        self.batches.append(len(segments))
        return [(f"{len(s) / 16_000:.2f} s", None) for s in segments]


def test_stream_yields_each_segment_when_its_chunk_is_decoded():
    model = CountingTranscriber(batch_size=1)
    audio = np.random.default_rng(1).standard_normal(int(3.5 * 16_000)).astype(np.float32) * 0.1
    segments, info = model.transcribe((audio, 16_000), stream=True)
    assert info == TranscriptionInfo(duration=3.5) and model.batches == []  # nothing decoded yet
    first = next(segments)
    assert model.batches == [1] and first.start == 0.0  # one chunk decoded, the rest not
    rest = list(segments)
    assert len(model.batches) == 1 + len(rest) >= 4
    whole = model.transcribe(audio)
    assert [s.text for s in [first, *rest]] == [s.text for s in whole.segments]
    assert [(s.start, s.end) for s in [first, *rest]] == [(s.start, s.end) for s in whole.segments]


def test_stream_raises_for_a_bad_file_before_decoding(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 50)
    with pytest.raises(AudioError, match="bad.wav"):
        CountingTranscriber().transcribe(str(bad), stream=True)


def test_on_segment_hears_every_segment_before_its_transcript(tmp_path):
    model = CountingTranscriber(batch_size=2)
    rng = np.random.default_rng(2)
    heard, events = [], []
    sources = [(rng.standard_normal(int(s * 16_000)).astype(np.float32) * 0.1, 16_000) for s in (2.5, 1.2)]
    for i, (_, result) in enumerate(model.transcribe_many(
            sources, on_segment=lambda src, seg: heard.append((id(src), seg)) or events.append("segment"))):
        events.append(f"transcript {i}")
        assert [seg for src, seg in heard if src == id(sources[i])] == list(result.segments)
    assert events.index("transcript 0") > events.index("segment") and events[-1] == "transcript 1"


def test_batch_bar_counts_seconds_and_verbose_prints_segments(tmp_path, capsys):
    import soundfile as sf

    from speechllm.apps.batch import SecondsProgress, run_batch

    paths = []
    for i, seconds in enumerate((2.5, 1.5)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, np.random.default_rng(i).standard_normal(int(seconds * 16_000)) * 0.1, 16_000)
        paths.append(str(path))
    bars = []
    original = SecondsProgress.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        bars.append(self)

    SecondsProgress.__init__ = spy
    try:
        run_batch(CountingTranscriber(batch_size=1), paths, tmp_path / "out.jsonl", progress=True,
                  verbose=True)
    finally:
        SecondsProgress.__init__ = original
    bar = bars[0].bar
    assert bar.total == pytest.approx(4.0) and bar.n == pytest.approx(4.0)
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    printed = [f"{row['audio']} [00:00:{s['start']:06.3f} --> 00:00:{s['end']:06.3f}] {s['text']}"
               for row in rows for s in row["segments"]]
    assert out == printed and len(out) >= 4  # ≤ 1 s chunks, printed as decoded, no per-file echo


@pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None,
                    reason="whisper-tiny.en bundle not installed")
def test_real_model_reads_tuples_and_stereo_as_their_file():
    import soundfile as sf

    import speechllm

    model = speechllm.load("whisper-tiny.en", device="cpu", segmenter="fixed")
    clip = EXAMPLES / "weather_awb.flac"
    expected = "The weather will be sunny tomorrow morning."  # what it transcribes the file as
    audio, rate = sf.read(clip, dtype="float32")
    stereo_44k = np.stack([resample(audio, rate, 44_100)] * 2, axis=1)
    assert model.transcribe((stereo_44k, 44_100)).text == expected
    segments, info = model.transcribe((stereo_44k.T, 44_100), stream=True)
    assert " ".join(s.text for s in segments) == expected
    assert info.duration == pytest.approx(len(audio) / rate, abs=0.01)
