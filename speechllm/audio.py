"""Audio input: any file libsndfile or FFmpeg reads, any rate and channel count -> float32 mono 16 kHz.

Files are opened by the first decoder of :data:`DECODERS` that reads them: libsndfile
(``soundfile``: wav, flac, ogg/vorbis, opus, mp3, aiff, ...) and then PyAV (the optional
``audio`` extra, ``pip install 'speechllm[audio]'``; its wheels bundle FFmpeg) for the
containers phones and video produce (m4a/AAC, mp4, webm, mkv, ...). Both decode as a stream,
block by block, so memory stays bounded. Arrays are taken too (:func:`audio_from_array`):
1-D or 2-D, at any sampling rate.

Every failure is an :class:`AudioError` whose message names the file and the reason, so a
batch job can record it on one line and go on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from speechllm.files import atomic_path
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
    frames: int  # -1 when the header does not know (audio_info counts them then)
    format: str
    decoder: str = "soundfile"  # the DECODERS entry that reads the file

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _soundfile():
    import soundfile

    return soundfile


def check_audio_file(path: str | Path) -> AudioInfo:
    """The header as the first decoder that reads it sees it (``frames`` may be -1: unknown), or
    an :class:`AudioError` saying why the file is no usable recording: missing, a folder, empty,
    not audio, a sample rate no speech recording has. Cheap (the samples are not decoded): front
    ends call it before loading a model."""
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
    info = _probe(path)
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {info.sample_rate} Hz in its header: no speech recording is "
                               f"below {MIN_SAMPLE_RATE:,} Hz (a damaged or mislabelled file)")
    return info


def _looks_like_mp3(path: Path) -> bool:
    """An ID3 tag, or an MPEG frame sync in the first 64 KiB (text and other formats have none)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return head.startswith(b"ID3") or re.search(rb"\xff[\xe0-\xff]", head) is not None


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts (rate, channels, length); the samples are decoded only when the header does
    not know the length (some mp3/ogg/webm files), to count them."""
    info = check_audio_file(path)
    if info.frames < 0:
        frames = sum(len(b) for b in DECODERS[info.decoder].blocks(Path(path), 1 << 16))
        info = replace(info, frames=frames)
    return info


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
    blocks = [_to_mono(b) for b in DECODERS[info.decoder].blocks(Path(path), 1 << 20)]
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        raise AudioError(path, "no audio samples (0 s)")
    _check_finite(path, audio)
    return resample(audio, info.sample_rate, sample_rate)


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

    stream = None
    if info.sample_rate != sample_rate:
        stream = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    blocksize = max(1, int(block_seconds * info.sample_rate))
    for block in DECODERS[info.decoder].blocks(Path(path), blocksize):
        mono = _to_mono(block)
        _check_finite(path, mono)
        out = stream.resample_chunk(mono) if stream is not None else mono
        if out.size:
            yield out
    if stream is not None:
        tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


def audio_from_array(audio, sampling_rate: int = SAMPLE_RATE, name: str = "<array>") -> np.ndarray:
    """An in-memory recording as float32 mono at 16 kHz.

    ``audio``: 1-D, or 2-D with the channels on the shorter axis, either ``(samples, channels)``
    as soundfile returns it or ``(channels, samples)`` as torchaudio and librosa do (at most
    :data:`MAX_CHANNELS`); channels are averaged. Integer PCM is scaled to [-1, 1).
    ``sampling_rate``: the array's rate in Hz; anything else than 16 kHz is resampled (soxr).
    """
    array = np.asarray(audio)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float32) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    elif array.dtype.kind != "f":
        raise AudioError(name, f"expected an array of numbers, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        if min(array.shape) > MAX_CHANNELS:
            raise AudioError(name, f"2-D array {array.shape}: neither axis is a channel axis "
                                   f"(at most {MAX_CHANNELS} channels)")
        array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise AudioError(name, f"expected a non-empty 1-D or 2-D array, got shape {array.shape}")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) \
            or sampling_rate < MIN_SAMPLE_RATE:
        raise AudioError(name, f"sampling_rate {sampling_rate!r}: expected an integer rate in Hz "
                               f"of at least {MIN_SAMPLE_RATE:,}")
    _check_finite(name, array)
    return resample(array, int(sampling_rate), SAMPLE_RATE)


MAX_CHANNELS = 16


# --- decoders: libsndfile first, then FFmpeg through PyAV ------------------------------------


class Decoder:
    """Reads one family of files: header facts, then float32 ``(frames, channels)`` blocks at the
    file's own rate. Both raise :class:`AudioError` naming the file."""

    name = ""

    def info(self, path: Path) -> AudioInfo:
        raise NotImplementedError

    def blocks(self, path: Path, blocksize: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


class SoundfileDecoder(Decoder):
    name = "soundfile"

    def info(self, path):
        try:
            info = _soundfile().info(str(path))
        except Exception as exc:  # libsndfile's messages are cryptic; keep them but name the file
            raise AudioError(path, _unreadable(exc)) from None
        frames = int(info.frames)
        frames = -1 if frames < 0 or frames > 2**62 else frames  # some mp3/ogg headers do not know
        return AudioInfo(str(path), int(info.samplerate), int(info.channels), frames, str(info.format),
                         self.name)

    def blocks(self, path, blocksize):
        try:
            yield from _soundfile().blocks(str(path), blocksize=blocksize, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(path, f"unreadable audio ({_short(exc)})") from None


AV_INSTALL = "pip install 'speechllm[audio]'"
# what libsndfile cannot read and FFmpeg can: phone recordings, video soundtracks, web audio
AV_SUFFIXES = (".m4a", ".m4b", ".mp4", ".m4v", ".aac", ".webm", ".weba", ".mkv", ".mka", ".mov",
               ".3gp", ".amr", ".wma", ".wmv", ".avi", ".ac3", ".ts")
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf",
                      ".w64", ".rf64")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + AV_SUFFIXES  # what a folder of recordings is searched for


def is_uri(source: str) -> bool:
    """``s3://bucket/key``, ``gs://...``, ``file:///abs/path``: an object-store input (read through Ray
    Data, ``--ray``), not a local path."""
    return "://" in source


def _pyav():
    try:
        import av
    except ImportError:
        return None
    return av


class PyAVDecoder(Decoder):
    """FFmpeg (PyAV) for containers libsndfile cannot read: the first audio stream, every channel
    kept (mixed down by the caller as libsndfile's are), at its own rate."""

    name = "pyav"

    def info(self, path):
        av = _pyav()
        if av is None:
            raise AudioError(path, f"unreadable audio: {path.suffix or 'this'} files need PyAV "
                                   f"(FFmpeg): {AV_INSTALL}")
        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                stream = next((s for s in container.streams if s.type == "audio"), None)
                if stream is None:
                    raise AudioError(path, "no audio stream in this file")
                rate = int(stream.codec_context.sample_rate or stream.rate or 0)
                channels = int(stream.codec_context.channels or 0)
                if rate <= 0 or channels <= 0:  # what FFmpeg's probe guesses of text or noise
                    raise AudioError(path, f"{NOT_AUDIO} (no decodable audio stream)")
                seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                           else container.duration / av.time_base if container.duration else None)
                frames = round(seconds * rate) if seconds is not None else -1
                return AudioInfo(str(path), rate, channels, frames, container.format.name, self.name)
        except AudioError:
            raise
        except Exception as exc:  # FFmpeg's reason without the path it repeats
            reason = getattr(exc, "strerror", None) or _short(exc)
            raise AudioError(path, f"unreadable audio ({reason})") from None

    def blocks(self, path, blocksize):
        av = _pyav()
        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                stream = next(s for s in container.streams if s.type == "audio")
                planar = av.AudioResampler(format="fltp")  # float, the first frame's rate and layout
                pending, count = [], 0
                for frame in container.decode(stream):
                    for out in planar.resample(frame):
                        pending.append(out.to_ndarray().T)
                        count += out.samples
                    if count >= blocksize:
                        yield np.concatenate(pending)
                        pending, count = [], 0
                pending += [out.to_ndarray().T for out in planar.resample(None)]
                if pending and sum(len(p) for p in pending):
                    yield np.concatenate(pending)
        except AudioError:
            raise
        except Exception as exc:  # FFmpeg's reason without the path it repeats
            reason = getattr(exc, "strerror", None) or _short(exc)
            raise AudioError(path, f"unreadable audio ({reason})") from None


DECODERS: dict[str, Decoder] = {d.name: d for d in (SoundfileDecoder(), PyAVDecoder())}


def _probe(path: Path) -> AudioInfo:
    """The first decoder's header that reads ``path``. A file libsndfile refuses goes to PyAV; when
    that fails too, the reason given is PyAV's for the containers only it reads (m4a, webm, ...) and
    libsndfile's for the rest (a .wav holding text is "not a readable audio file")."""
    try:
        return DECODERS["soundfile"].info(path)
    except AudioError as first:
        if _pyav() is None and path.suffix.lower() not in AV_SUFFIXES:
            raise
        try:
            return DECODERS["pyav"].info(path)
        except AudioError as second:
            raise (second if path.suffix.lower() in AV_SUFFIXES else first) from None


# what write_audio encodes through PyAV, by suffix (the rest goes to libsndfile)
AV_ENCODERS = {".m4a": "aac", ".mp4": "aac", ".mov": "aac", ".webm": "libopus", ".mka": "libopus",
               ".mkv": "libopus", ".opus": "libopus"}


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono audio atomically (temp file + rename); the format follows the suffix: .wav, .flac,
    .ogg, .mp3 through libsndfile, and with PyAV .m4a/.mp4/.mov (AAC), .webm/.mka/.mkv/.opus (Opus)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(audio, dtype=np.float32)
    with atomic_path(path, durable=False, keep_suffix=True) as tmp:  # FFmpeg picks the container by suffix
        codec = AV_ENCODERS.get(path.suffix.lower())
        if codec is not None:
            _encode_with_pyav(tmp, samples, sample_rate, codec)
        else:
            fmt = path.suffix.lstrip(".").upper() or "WAV"
            _soundfile().write(str(tmp), samples, sample_rate, format=fmt)


def _encode_with_pyav(path: Path, samples: np.ndarray, sample_rate: int, codec: str) -> None:
    av = _pyav()
    if av is None:
        raise AudioError(path, f"writing {path.suffix} files needs PyAV (FFmpeg): {AV_INSTALL}")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
