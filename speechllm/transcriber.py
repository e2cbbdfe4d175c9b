"""Speech → text with the Whisper baseline: any length, batched, with segment timestamps.

Long recordings are streamed and cut into ≤ 30 s segments (``speechllm.segment``); segments of
several files share one batch, so many short files and one long file both keep the model busy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from speechllm.audio import SAMPLE_RATE, AudioError, audio_from_array, audio_info, stream_audio
from speechllm.device import pick_device
from speechllm.segment import AudioSegment, segment_stream
from speechllm.whisper.timing import Word
from speechllm.whisper.transcribe import TEMPERATURE_FALLBACK
from speechllm.zoo import DEFAULT_ASR

# a path; a 1-D (or 2-D, channels on the shorter axis) array at 16 kHz; or (array, sampling_rate)
AudioSource = str | Path | np.ndarray | tuple[np.ndarray, int]


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    stop: str | None = None  # why its generation ended ("end", "repetition", "length"), when known
    avg_logprob: float | None = None  # Whisper: mean log-probability of its window's tokens
    no_speech_prob: float | None = None  # Whisper: probability of <|nospeech|> for its window
    compression_ratio: float | None = None  # text bytes / zlib bytes (above 2.4: a loop)
    temperature: float | None = None  # Whisper: the temperature its window was decoded at
    words: tuple[Word, ...] | None = None  # with word timestamps: (word, start, end, probability)

    def to_row(self) -> dict:
        """The JSON row of ``speechllm transcribe --output``: what is known, rounded."""
        row: dict = {"start": self.start, "end": self.end, "text": self.text}
        for key in ("avg_logprob", "no_speech_prob", "compression_ratio", "temperature"):
            value = getattr(self, key)
            if value is not None:
                row[key] = round(value, 4)
        if self.words is not None:
            row["words"] = [w.to_row() for w in self.words]
        return row


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    duration: float
    language: str | None = None  # detected or given (multilingual Whisper)
    language_probs: dict[str, float] | None = None  # detected: the likeliest languages, highest first

    @property
    def stop(self) -> str | None:
        """The reason a segment's generation ended, the worst first: a length cut, then a loop."""
        stops = {s.stop for s in self.segments}
        return next((r for r in ("length", "repetition", "end") if r in stops), None)

    def to_row(self) -> dict:
        """The JSON row of ``speechllm transcribe --output`` (without its "audio"): text, duration,
        segments, and where known the language (with its probabilities when detected) and the stop."""
        row: dict = {"text": self.text, "duration": round(self.duration, 3),
                     "segments": [s.to_row() for s in self.segments]}
        if self.language is not None:  # Whisper: given or detected
            row["language"] = self.language
            if self.language_probs:
                row["language_probs"] = self.language_probs
        if self.stop is not None:  # a speech-LLM's reply: why it ended (end/repetition/length)
            row["stop"] = self.stop
        return row


SegmentText = tuple[str, str | None]  # a decoded segment's text and why its generation ended


@dataclass(frozen=True)
class ChunkResult:
    """What a ≤ 30 s chunk became: timed segments (seconds from the chunk's start), its language."""

    segments: tuple[Segment, ...]
    language: str | None = None
    language_probs: dict[str, float] | None = None


class Segmenter:
    """Cuts one recording into ≤ 30 s pieces; ``fixed`` cuts at quiet points, ``vad`` keeps speech only."""

    def __call__(self, blocks: Iterable[np.ndarray], max_seconds: float) -> Iterator[AudioSegment]:
        raise NotImplementedError


class FixedSegmenter(Segmenter):
    def __call__(self, blocks, max_seconds):
        return segment_stream(blocks, max_seconds)


class VadSegmenter(Segmenter):
    def __init__(self) -> None:
        from speechllm.vad import SileroVAD

        self.vad = SileroVAD()

    def __call__(self, blocks, max_seconds):
        from speechllm.vad import VadOptions, vad_segments

        return vad_segments(blocks, self.vad, VadOptions(max_seconds=max_seconds))


SEGMENTERS: dict[str, type[Segmenter]] = {"vad": VadSegmenter, "fixed": FixedSegmenter}


def make_segmenter(name: str = "auto") -> Segmenter:
    """``auto``: Silero VAD when its bundle is installed, else fixed-length cuts at quiet points."""
    if name == "auto":
        from speechllm.zoo import DEFAULT_VAD, ZOO

        name = "vad" if ZOO[DEFAULT_VAD].bundle.folder() is not None else "fixed"
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r} (choose from {', '.join(SEGMENTERS)})")
    return SEGMENTERS[name]()


@dataclass(frozen=True)
class TranscriptionInfo:
    """What is known of a recording before its segments are decoded (``transcribe(stream=True)``)."""

    duration: float  # seconds


def open_source(source: AudioSource) -> tuple[Iterable[np.ndarray], float]:
    """Audio blocks of a file or array, and its duration in seconds. Arrays: see
    :func:`speechllm.audio.audio_from_array` (1-D or 2-D, any rate given as ``(array, rate)``)."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("<array>", f"expected (array, sampling_rate), got a tuple of {len(source)}")
        audio = audio_from_array(*source)
    elif isinstance(source, (str, Path)):
        return stream_audio(source), audio_info(source).duration
    else:
        audio = audio_from_array(source)
    return [audio], len(audio) / SAMPLE_RATE


QUANT_CHOICES = ("int8", "int4")


def quantize_linears(model: torch.nn.Module, quant: str) -> int:
    """Swap every ``nn.Linear`` for a round-to-nearest ``QuantLinear`` (``speechllm.quant``); returns
    how many. int8 lets the kernel choice quantize activations too (fbgemm dynamic int8: measured
    ~2-3x faster than fp32 for whisper-tiny.en on 2 CPU cores, same transcripts on examples/)."""
    from speechllm.quant import INT4, INT8, QuantLinear
    from speechllm.quant.model import QuantConfig, set_module, target_linears

    if quant not in QUANT_CHOICES:
        raise ValueError(f"--quant {quant!r}: choose from {', '.join(QUANT_CHOICES)}")
    spec = INT8 if quant == "int8" else INT4
    linears = target_linears(model, QuantConfig(bits=spec.bits, group_size=spec.group_size))
    for name, linear in linears.items():
        set_module(model, name, QuantLinear.from_linear(linear, spec, exact=False))
    return len(linears)


class WhisperTranscriber:
    """Batch transcription with the project's own Whisper: segments from its timestamp tokens,
    language detection (multilingual models), translation to English, temperature fallback,
    word timestamps. Options as :class:`~speechllm.whisper.transcribe.TranscribeOptions`;
    ``temperature`` is one value or the sequence tried in turn (default: Whisper's fallback, as
    openai-whisper and faster-whisper decode; 0: greedy alone); ``detect_among`` limits language
    detection to those languages (e.g. ``("en", "es")``)."""

    max_segment_seconds = 30.0

    def __init__(self, model: str = DEFAULT_ASR, device: str | None = None,
                 beam_size: int = 1, batch_size: int = 8, dtype: torch.dtype = torch.float32,
                 segmenter: str = "auto", quant: str | None = None, task: str = "transcribe",
                 language: str | None = None, temperature: float | Sequence[float] = TEMPERATURE_FALLBACK,
                 word_timestamps: bool = False, detect_among: Sequence[str] = (), **decoding):
        from speechllm.whisper import load_whisper
        from speechllm.whisper.transcribe import TranscribeOptions
        from speechllm.zoo import resolve

        self.device = pick_device(device)
        self.resolved = resolve(model)
        self.model, self.tokenizer = load_whisper(self.resolved.path, device=self.device, dtype=dtype)
        if quant is not None:
            quantize_linears(self.model, quant)
        temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
        self.options = TranscribeOptions(language=self.check_language(language), task=self.check_task(task),
                                         beam_size=beam_size, temperatures=tuple(map(float, temperatures)),
                                         word_timestamps=word_timestamps,
                                         detect_among=tuple(self.check_language(c) for c in detect_among),
                                         **decoding)
        self.batch_size = max(1, batch_size)
        self.segmenter = make_segmenter(segmenter)

    def check_language(self, language: str | None) -> str | None:
        """``None``/``auto``: detect (multilingual), English for an English-only model."""
        if language in (None, "auto"):
            return None if self.model.config.is_multilingual else "en"
        code = language.strip().lower()
        if not self.model.config.is_multilingual and code != "en":
            raise ValueError(f"--language {language}: {self.resolved.name} is English-only; use a "
                             "multilingual model (e.g. --model whisper-base) for other languages")
        if code not in self.tokenizer.languages:
            raise ValueError(f"--language {language}: not a Whisper language code (e.g. en, es, fr, de, "
                             f"zh; {len(self.tokenizer.languages)} in all)")
        return code

    def check_task(self, task: str) -> str:
        if task == "translate" and not self.model.config.is_multilingual:
            raise ValueError(f"{self.resolved.name} is English-only and cannot translate; use a multilingual "
                             "Whisper (e.g. --model whisper-base)")
        return task

    def decode_segments(self, segments: list[np.ndarray]) -> list[ChunkResult]:
        """Timed segments of each ≤ 30 s chunk, decoded as one batch (see ``whisper.transcribe``)."""
        from speechllm.whisper.transcribe import transcribe_windows

        results = transcribe_windows(self.model, self.tokenizer, segments, self.options)
        return [ChunkResult(tuple(Segment(s.start, s.end, s.text, None, s.avg_logprob, s.no_speech_prob,
                                          s.compression_ratio, s.temperature, s.words) for s in r.segments),
                            r.language, r.language_probs) for r in results]

    def transcribe(self, source: AudioSource, stream: bool = False):
        """The :class:`Transcript` of one recording (a path, an array, or ``(array, rate)``).

        ``stream=True`` returns ``(segments, info)`` at once, as faster-whisper does: ``info`` a
        :class:`TranscriptionInfo`, ``segments`` a generator that decodes as it is read, one batch
        of ≤ 30 s chunks at a time, yielding each :class:`Segment` as soon as its chunk is decoded.
        A file that cannot be opened raises :class:`AudioError` here, before anything is decoded.
        """
        if stream:
            blocks, duration = open_source(source)
            return self._stream_segments(blocks), TranscriptionInfo(duration)
        result = next(self.transcribe_many([source]))[1]
        if isinstance(result, AudioError):
            raise result
        return result

    def _stream_segments(self, blocks: Iterable[np.ndarray]) -> Iterator[Segment]:
        batch: list[AudioSegment] = []
        for chunk in self.segmenter(blocks, self.max_segment_seconds):
            batch.append(chunk)
            if len(batch) >= self.batch_size:
                yield from self._decoded(batch)
                batch = []
        if batch:
            yield from self._decoded(batch)

    def _decoded(self, chunks: list[AudioSegment]) -> Iterator[Segment]:
        """The segments of ``chunks`` (in order, timed from the recording's start), decoded as one batch."""
        for chunk, result in zip(chunks, self.decode_segments([c.audio for c in chunks]), strict=True):
            yield from self._assemble([(chunk, result)], 0.0).segments

    def transcribe_many(
        self, sources: Iterable[AudioSource], on_segment: Callable[[AudioSource, Segment], None] | None = None
    ) -> Iterator[tuple[AudioSource, Transcript | AudioError]]:
        """Yield ``(source, Transcript or AudioError)`` in input order; bad files do not stop it.

        ``on_segment(source, segment)`` is called for every segment as soon as its chunk is
        decoded (chunks of several files share a batch, so their segments interleave): what
        ``--verbose`` prints and the progress bar counts, long before the whole file is done.
        """
        names: dict[int, AudioSource] = {}
        pending: list[tuple[int, AudioSegment]] = []
        done: dict[int, list[tuple[AudioSegment, SegmentText | ChunkResult]]] = {}
        order: list[tuple[AudioSource, AudioError | None, int, float]] = []  # + n segments, duration
        finished: list[int] = []

        def flush() -> None:
            texts = self.decode_segments([seg.audio for _, seg in pending])
            for (idx, seg), text in zip(pending, texts, strict=True):
                done.setdefault(idx, []).append((seg, text))
                for segment in self._assemble([(seg, text)], 0.0).segments if on_segment else ():
                    on_segment(names[idx], segment)
            pending.clear()

        def ready() -> Iterator[tuple[AudioSource, Transcript | AudioError]]:
            while order:
                source, error, count, duration = order[0]
                idx = len(finished)
                if error is None and len(done.get(idx, [])) < count:
                    return
                order.pop(0)
                finished.append(idx)
                parts = done.pop(idx, [])
                yield source, (error if error is not None else self._assemble(parts, duration))

        for idx, source in enumerate(sources):
            names[idx] = source
            count, error, duration = 0, None, 0.0
            try:
                blocks, duration = open_source(source)
                for seg in self.segmenter(blocks, self.max_segment_seconds):
                    pending.append((idx, seg))
                    count += 1
                    if len(pending) >= self.batch_size:
                        flush()
            except AudioError as exc:
                error = exc
                pending[:] = [p for p in pending if p[0] != idx]
                done.pop(idx, None)
            order.append((source, error, count, duration))
            yield from ready()
        if pending:
            flush()
        yield from ready()

    @staticmethod
    def _assemble(parts: list[tuple[AudioSegment, SegmentText | ChunkResult]], duration: float) -> Transcript:
        """One transcript from its chunks: a chunk's text (a speech-LLM's) spans the chunk; timed
        segments move by the chunk's start. The language is the one most probable over the chunks,
        each weighted by its length."""
        parts.sort(key=lambda p: p[0].start)
        segments: list[Segment] = []
        votes: dict[str, float] = {}
        languages = set()
        for chunk, result in parts:
            start = chunk.start / SAMPLE_RATE
            if not isinstance(result, ChunkResult):
                text, stop = result
                segments.append(Segment(round(start, 3), round(chunk.end / SAMPLE_RATE, 3), text, stop))
                continue
            segments += [_shifted(s, start) for s in result.segments]
            languages.add(result.language)
            weight = (chunk.end - chunk.start) / SAMPLE_RATE
            for code, p in (result.language_probs or {}).items():
                votes[code] = votes.get(code, 0.0) + weight * p
        text = " ".join(s.text for s in segments if s.text)
        language = next(iter(languages)) if len(languages) == 1 else None
        probs = None
        if votes:
            total = sum(votes.values())
            probs = {c: round(v / total, 4) for c, v in sorted(votes.items(), key=lambda kv: -kv[1])[:5]}
            language = next(iter(probs))
        return Transcript(text, tuple(segments), duration, language, probs)


def _shifted(segment: Segment, seconds: float) -> Segment:
    """``segment`` (and its words) moved ``seconds`` later."""
    if not seconds:
        return segment
    words = None if segment.words is None else tuple(w.shifted(seconds) for w in segment.words)
    return replace(segment, start=round(segment.start + seconds, 3), end=round(segment.end + seconds, 3),
                   words=words)
