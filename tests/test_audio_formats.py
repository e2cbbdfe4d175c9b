"""Phone and video containers (m4a/AAC, mp4, webm, ogg/opus, mp3) made here from one WAV with PyAV:
they decode to the WAV's samples within codec tolerance and transcribe the same as the WAV."""

from pathlib import Path

import numpy as np
import pytest

from speechllm.audio import DECODERS, AudioError, audio_info, check_audio_file, load_audio, write_audio

av = pytest.importorskip("av", reason="PyAV (the 'audio' extra) not installed")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# suffix -> encoder: write_audio's (AAC and Opus through PyAV at FFmpeg's default bitrates, Opus in
# WebM and in Ogg; MP3 through libsndfile's LAME)
FORMATS = {"m4a": "aac", "mp4": "aac", "webm": "libopus", "opus": "libopus", "mp3": "mp3"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One spoken example written as a 16 kHz WAV, and that WAV in every container."""
    folder = tmp_path_factory.mktemp("formats")
    wav = folder / "source.wav"
    write_audio(wav, load_audio(EXAMPLES / "meeting_slt.flac"))
    samples = load_audio(wav)
    made = {}
    for suffix, codec in FORMATS.items():
        if codec not in av.codecs_available:
            continue
        write_audio(folder / f"source.{suffix}", samples)
        made[suffix] = folder / f"source.{suffix}"
    return wav, made


def aligned_snr(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 2_048) -> tuple[int, float]:
    """The encoder's delay (AAC/MP3 priming, in samples) and the SNR in dB once it is taken off."""
    window = reference[: 2 * 16_000]
    lags = range(0, max_lag + 1)
    lag = max(lags, key=lambda k: float(np.dot(window, decoded[k: k + len(window)])))
    n = min(len(reference), len(decoded) - lag)
    error = reference[:n] - decoded[lag: lag + n]
    return lag, 10 * np.log10(np.sum(reference[:n] ** 2) / max(np.sum(error**2), 1e-12))


def test_every_container_decodes_to_the_wav_samples(files):
    wav, made = files
    reference = load_audio(wav)
    assert set(made) >= {"m4a", "mp4", "webm", "opus", "mp3"} - {s for s, c in FORMATS.items()
                                                                if c not in av.codecs_available}
    for suffix, path in made.items():
        info = check_audio_file(path)
        assert info.decoder == ("pyav" if suffix in ("m4a", "mp4", "webm") else info.decoder), suffix
        decoded = load_audio(path)
        assert decoded.dtype == np.float32 and decoded.ndim == 1
        lag, snr = aligned_snr(reference, decoded)
        assert lag <= 1_200 and abs(len(decoded) - lag - len(reference)) < 1_600, (suffix, lag, len(decoded))
        assert snr > 10, (suffix, snr)
        assert abs(audio_info(path).duration - len(reference) / 16_000) < 0.15, suffix
        # FFmpeg reads the formats libsndfile reads too (mp3, opus where a libsndfile lacks them)
        streamed = np.concatenate([b.mean(axis=1) for b in DECODERS["pyav"].blocks(path, 4_096)])
        assert len(streamed) >= len(reference) * DECODERS["pyav"].info(path).sample_rate // 16_000 - 1


def test_unreadable_by_both_decoders_is_one_line(tmp_path):
    fake = tmp_path / "voice-note.m4a"
    fake.write_bytes(b"this is a text file, not a recording\n" * 40)
    with pytest.raises(AudioError, match="voice-note.m4a: unreadable audio") as caught:
        check_audio_file(fake)
    assert "\n" not in str(caught.value)
    text = tmp_path / "notes.wav"
    text.write_bytes(b"just words\n" * 40)
    with pytest.raises(AudioError, match="not a readable audio file"):
        check_audio_file(text)


def test_without_pyav_the_error_says_how_to_install_it(tmp_path, files, monkeypatch):
    import speechllm.audio

    monkeypatch.setattr(speechllm.audio, "_pyav", lambda: None)
    with pytest.raises(AudioError, match=r"source.m4a: unreadable audio: .m4a files need PyAV \(FFmpeg\): "
                                         r"pip install 'speechllm\[audio\]'"):
        check_audio_file(files[1]["m4a"])


def test_folders_expand_to_the_new_containers(files):
    from speechllm.apps.batch import expand_inputs, precheck

    wav, made = files
    found = precheck(expand_inputs([str(wav.parent)]))
    assert sorted(found) == sorted([str(wav), *map(str, made.values())])


@pytest.mark.skipif(__import__("speechllm.zoo").zoo.ZOO["whisper-tiny.en"].bundle.folder() is None,
                    reason="whisper-tiny.en bundle not installed")
def test_every_container_transcribes_as_its_wav(files):
    import speechllm

    wav, made = files
    model = speechllm.load("whisper-tiny.en", device="cpu", segmenter="fixed")
    results = dict(model.transcribe_many([str(wav), *map(str, made.values())]))
    expected = results.pop(str(wav)).text
    assert expected == "Please send me the report before the meeting."
    assert {Path(k).suffix: r.text for k, r in results.items()} == {f".{s}": expected for s in made}
