import numpy as np
import pytest
import soundfile as sf

from speechllm.audio import AudioError, audio_info, load_audio, stream_audio, write_audio


@pytest.mark.parametrize("fmt,sr,channels", [("wav", 44_100, 2), ("flac", 8_000, 1), ("ogg", 22_050, 1),
                                             ("mp3", 48_000, 2)])
def test_any_format_rate_channels_to_16k_mono(tmp_path, make_tone, fmt, sr, channels):
    path = tmp_path / f"a.{fmt}"
    sf.write(path, make_tone(1.5, sr, channels=channels), sr, format=fmt.upper())
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24_000) < 1_200  # mp3 adds encoder padding
    assert 0.1 < np.abs(audio).max() < 0.5


def test_stream_equals_whole_file(tmp_path, make_tone):
    path = tmp_path / "long.wav"
    sf.write(path, make_tone(7.3, 44_100), 44_100)
    whole = load_audio(path)
    blocks = list(stream_audio(path, block_seconds=2.0))
    assert len(blocks) >= 3
    streamed = np.concatenate(blocks)
    assert len(streamed) == len(whole)
    assert np.abs(streamed - whole).max() < 1e-3


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"RIFF....garbage that is not audio" * 10), "unreadable audio"),
    (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), 16_000), "no audio samples"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16_000,
                        subtype="FLOAT"), "NaN or Inf"),
])
def test_bad_audio_names_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    message = str(err.value)
    assert message.startswith(str(path)) and reason in message
    assert "\n" not in message


def test_duration_limit(tmp_path, make_tone):
    path = tmp_path / "long.flac"
    sf.write(path, make_tone(3.0), 16_000)
    assert audio_info(path).duration == pytest.approx(3.0)
    with pytest.raises(AudioError, match="over the limit of 2 s"):
        load_audio(path, max_duration=2)
    assert len(load_audio(path, max_duration=5)) == 48_000


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_write_audio_is_atomic_and_roundtrips(tmp_path, make_tone):
    path = tmp_path / "sub" / "out.flac"
    write_audio(path, make_tone(0.5))
    assert [p.name for p in path.parent.iterdir()] == ["out.flac"]
    assert len(load_audio(path)) == 8_000
