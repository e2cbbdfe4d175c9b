"""Whisper over windows of up to 30 s: timestamped segments, seeking, temperature fallback, words.

As openai/whisper's ``transcribe.py``, but batched: every window of a batch is encoded once and
decoded together; a window whose last segment was cut off (no closing timestamp) is decoded
again from that segment's start (the seek), in a later batch, so nothing past the last complete
segment is lost and no window is ever truncated. A window whose transcript looks wrong (it
compresses too well: a loop; or its average log-probability is too low) is decoded again at the
next temperature of ``temperatures``, unless the model says there is no speech; where every temperature
fails, the most probable attempt that does not loop is kept.

The previous window's text is not fed back as a prompt (windows of a batch are decoded side by
side, and feeding it back is what makes Whisper loop on long files); ``initial_prompt`` is given
to every window instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from speechllm.whisper.decoding import (
    SECONDS_PER_TIMESTAMP,
    DecodingOptions,
    DecodingResult,
    compression_ratio,
    decode_audio,
    detect_language,
    encode,
)
from speechllm.whisper.model import Whisper
from speechllm.whisper.timing import Word, align_words, snap_to_pauses, trim_to_sound
from speechllm.whisper.tokenizer import WhisperTokenizer

SAMPLE_RATE = 16_000
MIN_SEEK_SECONDS = 1.0  # a cut-off segment is decoded again only when the seek moves this far
# greedy first, hotter while a window fails the checks below: openai-whisper's, faster-whisper's and the
# OpenAI API's schedule, and the default of every Whisper transcription here (--temperature 0: greedy alone)
TEMPERATURE_FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # None: detect per window (multilingual); English-only models: en
    detect_among: tuple[str, ...] = ()  # detection picks among these languages only (empty: all)
    task: str = "transcribe"  # or "translate" (to English, multilingual models)
    beam_size: int = 1
    temperatures: tuple[float, ...] = TEMPERATURE_FALLBACK  # tried in turn while a window's transcript fails
    best_of: int = 1  # samples drawn at each temperature above 0, the most probable kept (whisper's CLI: 5)
    compression_ratio_threshold: float | None = 2.4  # above: a loop, try the next temperature
    logprob_threshold: float | None = -1.0  # below (average per token): try the next temperature
    no_speech_threshold: float | None = 0.6  # above, with a low logprob: the window is silence
    initial_prompt: str | None = None  # text given before every window (names, spelling, style)
    timestamps: bool = True  # segments from timestamp tokens (False: one segment per window)
    word_timestamps: bool = False  # words with times from cross-attention DTW
    max_new_tokens: int = 224

    def __post_init__(self) -> None:
        if self.best_of < 1:
            raise ValueError(f"best_of must be at least 1, not {self.best_of}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be one or more values >= 0, not {self.temperatures}")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {self.task!r}")


@dataclass(frozen=True)
class TimedSegment:
    start: float  # seconds from the window's start
    end: float
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float
    no_speech_prob: float | None
    compression_ratio: float
    temperature: float
    words: tuple[Word, ...] | None = None  # with word_timestamps

    def shifted(self, seconds: float) -> TimedSegment:
        words = None if self.words is None else tuple(w.shifted(seconds) for w in self.words)
        return replace(self, start=round(self.start + seconds, 3), end=round(self.end + seconds, 3),
                       words=words)


@dataclass(frozen=True)
class WindowResult:
    segments: tuple[TimedSegment, ...]
    language: str | None
    language_probs: dict[str, float] | None


Piece = tuple[int, int, list[int]]  # start and end in timestamp steps (end -1: the window's end), text ids


def split_at_timestamps(tokens: list[int], timestamp_begin: int) -> tuple[list[Piece], int | None]:
    """Segments ``(start, end, text tokens)`` (times in timestamp steps) of a window's sampled
    tokens, and where to seek: the start of a last segment that was cut off (no closing
    timestamp), or None when the window is finished.

    ``<0> a b <5><5> c <9>``: two segments, finished (a single timestamp before the end closes
    the last one); ``<0> a b <5><5> c``: one segment, seek to step 5. Without timestamp pairs the
    whole window is one segment, ending at its last timestamp when there is one.
    """
    is_stamp = [t >= timestamp_begin for t in tokens]
    pairs = [i for i in range(1, len(tokens)) if is_stamp[i - 1] and is_stamp[i]]
    closed = len(tokens) >= 2 and is_stamp[-1] and not is_stamp[-2]
    if not pairs:
        stamps = [t - timestamp_begin for t in tokens if t >= timestamp_begin]
        text = [t for t in tokens if t < timestamp_begin]
        start = stamps[0] if len(stamps) >= 2 else 0
        end = stamps[-1] if len(stamps) >= 2 else -1  # -1: the window's end
        return ([(start, end, text)] if text else []), None
    cuts = pairs + ([len(tokens)] if closed else [])
    segments, last = [], 0
    for cut in cuts:
        piece = tokens[last:cut]
        text = [t for t in piece if t < timestamp_begin]
        if text:
            segments.append((piece[0] - timestamp_begin, piece[-1] - timestamp_begin, text))
        last = cut
    if closed:
        return segments, None
    return segments, tokens[last - 1] - timestamp_begin


def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    """Whether to decode the window again at the next temperature."""
    if (options.no_speech_threshold is not None and result.no_speech_prob is not None
            and result.no_speech_prob > options.no_speech_threshold):
        return False  # silence: a poor transcript is expected, and is dropped
    ratio = options.compression_ratio_threshold
    if ratio is not None and result.compression_ratio > ratio:
        return True
    return options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold


def is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    if options.no_speech_threshold is None or result.no_speech_prob is None:
        return False
    unsure = options.logprob_threshold is None or result.avg_logprob < options.logprob_threshold
    return result.no_speech_prob > options.no_speech_threshold and unsure


def decode_with_fallback(model: Whisper, tokenizer: WhisperTokenizer, audio: Tensor,
                         audio_mask: Tensor | None, options: TranscribeOptions,
                         languages: list[str | None]) -> list[DecodingResult]:
    """Each window at the first temperature whose transcript passes :func:`needs_fallback`; where every
    temperature fails, the best attempt (:func:`best_attempt`)."""
    prompt = tuple(tokenizer.encode(" " + options.initial_prompt.strip())) if options.initial_prompt else ()
    base = DecodingOptions(beam_size=options.beam_size, best_of=options.best_of, task=options.task,
                           timestamps=options.timestamps, prompt=prompt,
                           max_new_tokens=options.max_new_tokens)
    attempts: list[list[DecodingResult]] = [[] for _ in range(audio.shape[0])]
    todo = list(range(audio.shape[0]))
    for n, temperature in enumerate(options.temperatures):
        rows = torch.tensor(todo, device=audio.device)
        decoded = decode_audio(model, tokenizer, audio.index_select(0, rows),
                               None if audio_mask is None else audio_mask.index_select(0, rows),
                               replace(base, temperature=temperature, seed=n),
                               languages=[languages[i] for i in todo])
        for i, result in zip(todo, decoded, strict=True):
            attempts[i].append(result)
        todo = [i for i in todo if needs_fallback(attempts[i][-1], options)]
        if not todo:
            break
    return [best_attempt(tried, options) if i in todo else tried[-1] for i, tried in enumerate(attempts)]


def best_attempt(tried: list[DecodingResult], options: TranscribeOptions) -> DecodingResult:
    """A window that failed at every temperature keeps its most probable transcript among those that do not
    loop, as faster-whisper does, rather than the hottest one's. If each loops, the one that loops least
    (lowest compression ratio): a loop is most probable the longer it runs, so the most probable would be
    the longest run of inserted words (faster-whisper's choice there)."""
    ratio = options.compression_ratio_threshold
    calm = [r for r in tried if ratio is None or r.compression_ratio <= ratio]
    if calm:
        return max(calm, key=lambda r: r.avg_logprob)
    return min(tried, key=lambda r: r.compression_ratio)


@dataclass
class _Window:
    item: int
    offset: int  # samples from the item's start
    audio: np.ndarray
    language: str | None = None
    language_probs: dict[str, float] | None = None


def transcribe_windows(model: Whisper, tokenizer: WhisperTokenizer, windows: list[np.ndarray],
                       options: TranscribeOptions = TranscribeOptions()) -> list[WindowResult]:
    """Timestamped segments of each window (16 kHz mono, up to 30 s), decoded as a batch."""
    from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram

    segments: list[list[TimedSegment]] = [[] for _ in windows]
    found: dict[int, tuple[str | None, dict[str, float] | None]] = {}
    queue = [_Window(i, 0, w, options.language) for i, w in enumerate(windows) if len(w)]
    while queue:
        batch, queue = queue, []
        lengths = torch.tensor([len(w.audio) for w in batch])
        samples = torch.zeros(len(batch), max(int(lengths.max()), N_SAMPLES_30S))
        for row, w in enumerate(batch):
            samples[row, : len(w.audio)] = torch.from_numpy(np.asarray(w.audio, dtype=np.float32))
        samples, lengths = samples.to(model.device), lengths.to(model.device)
        mel, frames = log_mel_spectrogram(samples, lengths, pad_to=N_SAMPLES_30S)
        with torch.inference_mode():
            audio, audio_mask = encode(model, mel, frames, pad_to_30s=False)
        undetected = [row for row, w in enumerate(batch) if w.language is None]
        if model.config.is_multilingual and undetected:
            rows = torch.tensor(undetected, device=audio.device)
            probs = detect_language(model, tokenizer, audio[rows], audio_mask[rows], options.detect_among)
            for row, p in zip(undetected, probs, strict=True):
                batch[row].language, batch[row].language_probs = next(iter(p)), p
        results = decode_with_fallback(model, tokenizer, audio, audio_mask, options,
                                       [w.language for w in batch])
        for row, (w, result) in enumerate(zip(batch, results, strict=True)):
            found.setdefault(w.item, (result.language, w.language_probs))
            if is_silence(result, options):
                continue
            made, seek = _window_segments(result, tokenizer, len(w.audio) / SAMPLE_RATE)
            if options.word_timestamps and made:
                made = _with_words(model, tokenizer, audio[row : row + 1], audio_mask[row : row + 1],
                                   made, w.audio, result.language, options.task)
            segments[w.item] += [s.shifted(w.offset / SAMPLE_RATE) for s in made]
            if seek is not None:
                cut = int(round(seek * SAMPLE_RATE))
                queue.append(_Window(w.item, w.offset + cut, w.audio[cut:], result.language,
                                     w.language_probs))
    return [WindowResult(tuple(segments[i]), *found.get(i, (options.language, None)))
            for i in range(len(windows))]


def _window_segments(result: DecodingResult, tokenizer: WhisperTokenizer,
                     duration: float) -> tuple[list[TimedSegment], float | None]:
    """A window's segments, and the second to decode again from (None: the window is done).
    A cut-off last segment too near the start (no progress) or the end is kept as it is."""
    pieces, seek = split_at_timestamps(list(result.tokens), tokenizer.timestamp_begin)
    if seek is not None and not (MIN_SEEK_SECONDS <= seek * SECONDS_PER_TIMESTAMP < duration - 0.1):
        tail = [t for t in result.tokens[_last_stamp_index(result.tokens, tokenizer):] if t < tokenizer.eot]
        if tail and seek * SECONDS_PER_TIMESTAMP < duration - 0.1:
            pieces.append((seek, -1, tail))
        seek = None
    return _segments(pieces, result, tokenizer, duration), (None if seek is None
                                                            else seek * SECONDS_PER_TIMESTAMP)


def _last_stamp_index(tokens: tuple[int, ...], tokenizer: WhisperTokenizer) -> int:
    stamps = [i for i, t in enumerate(tokens) if t >= tokenizer.timestamp_begin]
    return stamps[-1] + 1 if stamps else 0


def _segments(pieces: list[Piece], result: DecodingResult, tokenizer: WhisperTokenizer,
              duration: float) -> list[TimedSegment]:
    """Pieces as segments in seconds, clamped to the window's audio (Whisper sees 30 s)."""
    out = []
    for start, end, text_tokens in pieces:
        text = tokenizer.decode(text_tokens).strip()
        if not text:
            continue
        t0 = min(start * SECONDS_PER_TIMESTAMP, duration)
        t1 = duration if end < 0 else min(max(end * SECONDS_PER_TIMESTAMP, t0), duration)
        out.append(TimedSegment(round(t0, 3), round(t1, 3), text, tuple(text_tokens), result.avg_logprob,
                                result.no_speech_prob, round(compression_ratio(text), 3), result.temperature))
    return out


def _with_words(model: Whisper, tokenizer: WhisperTokenizer, audio: Tensor, audio_mask: Tensor,
                segments: list[TimedSegment], samples: np.ndarray, language: str | None,
                task: str) -> list[TimedSegment]:
    """Segments with their words (one alignment over the window's text, boundaries moved into
    nearby pauses, quiet word edges trimmed), their start and end moved to their first and last word's."""
    grouped = align_words(model, tokenizer, audio, audio_mask, [list(s.tokens) for s in segments],
                          len(samples) // 160, language, task)
    flat = snap_to_pauses([w for words in grouped for w in words], samples, SAMPLE_RATE)
    flat = trim_to_sound(flat, samples, SAMPLE_RATE)
    sizes = np.cumsum([0] + [len(words) for words in grouped])
    grouped = [flat[a:b] for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return [replace(s, start=words[0].start, end=max(words[-1].end, words[0].start), words=tuple(words))
            if words else replace(s, words=()) for s, words in zip(segments, grouped, strict=True)]
