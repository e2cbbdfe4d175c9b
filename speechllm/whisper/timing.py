"""Word timestamps from the decoder's cross-attention, aligned to the audio by DTW.

As openai/whisper's ``timing.py`` does: run the decoder once over the transcript's text tokens,
take the cross-attention of the "alignment heads" (the few heads whose attention follows the
speech; known per checkpoint, else every head of the top half of the layers), normalise each
head over the tokens, smooth along time with a median filter, and find the monotonic path of
least cost through -attention with dynamic time warping. A token starts where the path first
reaches its row; a word spans its tokens.
"""

from __future__ import annotations

import base64
import gzip
import string
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from speechllm.whisper.decoding import SECONDS_PER_TIMESTAMP
from speechllm.whisper.model import Whisper
from speechllm.whisper.tokenizer import WhisperTokenizer

# openai/whisper's _ALIGNMENT_HEADS (base85 of a gzipped [layers, heads] bool array), by the
# shape that tells the checkpoints apart: (decoder layers, width, vocabulary)
ALIGNMENT_HEADS: dict[tuple[int, int, int], bytes] = {
    (4, 384, 51864): b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",  # tiny.en
    (4, 384, 51865): b"ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO",  # tiny
    (6, 512, 51864): b"ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00",  # base.en
    (6, 512, 51865): b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",  # base
}
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass(frozen=True)
class Word:
    word: str  # with its leading space, as decoded
    start: float
    end: float
    probability: float

    def to_row(self) -> dict:
        return {"word": self.word, "start": self.start, "end": self.end,
                "probability": round(self.probability, 4)}

    def shifted(self, seconds: float) -> Word:
        return Word(self.word, round(self.start + seconds, 3), round(self.end + seconds, 3), self.probability)


def alignment_heads(model: Whisper) -> list[tuple[int, int]]:
    """(layer, head) pairs whose cross-attention follows the speech: the model folder's own, else
    openai/whisper's for a known shape, else every head of the top half of the layers."""
    if getattr(model, "alignment_heads", None):
        return list(model.alignment_heads)
    c = model.config
    packed = ALIGNMENT_HEADS.get((c.n_decoder_layers, c.d_model, c.n_vocab))
    if packed is None:  # unknown checkpoint: every head of the top half, as openai/whisper does
        return [(layer, head) for layer in range(c.n_decoder_layers // 2, c.n_decoder_layers)
                for head in range(c.n_heads)]
    mask = np.frombuffer(gzip.decompress(base64.b85decode(packed)), dtype=bool)
    return [tuple(int(v) for v in divmod(int(i), c.n_heads)) for i in np.flatnonzero(mask)]


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of odd ``width`` along the last axis (reflect padding)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = torch.nn.functional.pad(x.reshape(-1, x.shape[-1]), (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).sort()[0][..., pad].reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The monotonic path of least total ``cost [N, M]`` from (0, 0) to (N-1, M-1), as
    (row indices, column indices); steps go down, right or diagonally. Computed one
    anti-diagonal at a time (vectorised), then traced back."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_words(tokenizer: WhisperTokenizer, tokens: list[int], language: str | None = None
                ) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: a new word at a leading space or a punctuation mark (languages
    written without spaces: at each whole character)."""
    pieces, piece_tokens, current = [], [], []
    for token in tokens:  # whole characters first: a multi-byte one may span tokens
        current.append(token)
        text = tokenizer.decode(current)
        if "\ufffd" not in text:
            pieces.append(text)
            piece_tokens.append(current)
            current = []
    if language in NO_SPACE_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, ids in zip(pieces, piece_tokens, strict=True):
        if not words or piece.startswith(" ") or piece.strip() in string.punctuation:
            words.append(piece)
            word_tokens.append(list(ids))
        else:
            words[-1] += piece
            word_tokens[-1] += ids
    return words, word_tokens


def merge_punctuation(words: list[Word]) -> list[Word]:
    """Opening marks join the next word, closing marks the previous one; each word keeps its own
    times and probability (as openai/whisper's ``merge_punctuations``)."""
    out = list(words)
    for i in range(len(out) - 2, -1, -1):
        if out[i].word.startswith(" ") and out[i].word.strip() in PREPEND_PUNCTUATION:
            nxt = out.pop(i + 1)
            out[i] = Word(out[i].word + nxt.word, nxt.start, nxt.end, nxt.probability)
    merged: list[Word] = []
    for w in out:
        if merged and w.word in APPEND_PUNCTUATION and not merged[-1].word.endswith(" "):
            last = merged[-1]
            merged[-1] = Word(last.word + w.word, last.start, last.end, last.probability)
        else:
            merged.append(w)
    return merged


@torch.inference_mode()
def align_words(model: Whisper, tokenizer: WhisperTokenizer, audio: Tensor, audio_mask: Tensor | None,
                segments: list[list[int]], n_frames: int, language: str | None = None,
                task: str = "transcribe", medfilt_width: int = 7) -> list[list[Word]]:
    """The words of each segment's text tokens (no timestamps), with start/end seconds, from
    one alignment of them all against one window's encoded ``audio [1, T', D]``; ``n_frames``
    is the mel length of the real audio (the padding excluded)."""
    text_tokens = [t for seg in segments for t in seg]
    if not text_tokens:
        return [[] for _ in segments]
    prompt = tokenizer.sot_sequence(language if model.config.is_multilingual else None, task)
    ids = torch.tensor([[*prompt, *text_tokens, tokenizer.eot]], device=audio.device)
    scores: list[Tensor] = []
    logits = model.decoder(ids, audio, audio_mask, cross_scores=scores)[0]
    probs = logits[len(prompt) - 1 : -2, : tokenizer.eot].softmax(dim=-1)
    token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()

    n_positions = max(1, min(n_frames // 2, audio.shape[1]))
    weights = torch.stack([scores[layer][0, head, :, :n_positions] for layer, head in alignment_heads(model)])
    weights = weights.float().softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std.clamp_min(1e-8), medfilt_width)
    matrix = weights.mean(dim=0)[len(prompt) - 1 : -1]  # the rows that predict each text token and eot
    rows, cols = dtw(-matrix.double().cpu().numpy())
    jumps = np.diff(rows, prepend=-1).astype(bool)
    token_times = cols[jumps] * SECONDS_PER_TIMESTAMP  # where each row (token) is first reached

    out, first = [], 0
    for seg in segments:
        words, word_tokens = split_words(tokenizer, seg, language)
        bounds = first + np.cumsum([0] + [len(t) for t in word_tokens])
        out.append(merge_punctuation([
            Word(word, round(float(token_times[a]), 3), round(float(token_times[b]), 3),
                 float(np.mean(token_probs[a:b])))
            for word, a, b in zip(words, bounds[:-1], bounds[1:], strict=True)]))
        first += len(seg)
    flat = _clip_long_words([w for words in out for w in words])
    grouped, index = [], 0
    for words in out:
        grouped.append(flat[index : index + len(words)])
        index += len(words)
    return grouped


def _loud_frames(audio: np.ndarray, sample_rate: int, floor_db: float, hop: float) -> np.ndarray:
    """Per frame of ``hop`` s, whether its RMS is within ``floor_db`` of the loudest frame's."""
    n = int(hop * sample_rate)
    frames = np.asarray(audio[: len(audio) // n * n], dtype=np.float64).reshape(-1, n)
    rms = np.sqrt((frames**2).mean(axis=1))
    return rms > max(float(rms.max(initial=0.0)) * 10 ** (floor_db / 20), 1e-5)


def pauses(audio: np.ndarray, sample_rate: int = 16_000, floor_db: float = -35.0, hop: float = 0.01,
           min_pause: float = 0.15) -> list[tuple[float, float]]:
    """The quiet runs of ``min_pause`` s or more between sounds (not the silence before the first
    sound or after the last), as (start, end) seconds."""
    if len(audio) < int(hop * sample_rate):
        return []
    hits = np.flatnonzero(_loud_frames(audio, sample_rate, floor_db, hop))
    gaps = np.flatnonzero(np.diff(hits) > max(1, int(round(min_pause / hop))))
    return [(round((hits[g] + 1) * hop, 3), round(hits[g + 1] * hop, 3)) for g in gaps]


def snap_to_pauses(words: list[Word], audio: np.ndarray, sample_rate: int = 16_000,
                   reach: float = 0.5, **pause_options) -> list[Word]:
    """Word boundaries moved into the pauses of the audio, where the cross-attention path put
    them near one. The path often gives a short word ("the", "a", "to") to the loud stretch of
    its neighbour and that word's own sound to the neighbour; a pause, though, is a boundary for
    certain. Each pause is matched to at most one boundary between consecutive words, in order
    (a monotonic matching of least total distance, by dynamic programming), if the boundary is
    within ``reach`` s of it; the words on either side then end where the pause starts and start
    where it ends. Boundaries matched to no pause keep their times (kept in order). A pause in
    no boundary's reach is taken to be inside a word and left alone."""
    found = pauses(audio, sample_rate, **pause_options)
    if len(words) < 2 or not found:
        return words
    lo = [min(a.end, b.start) for a, b in zip(words, words[1:], strict=False)]
    hi = [max(a.end, b.start) for a, b in zip(words, words[1:], strict=False)]
    n, m = len(lo), len(found)
    dist = np.array([[max(0.0, s - hi[i], lo[i] - e) for s, e in found] for i in range(n)])
    # cost[i, j]: the first i boundaries against the first j pauses; an unmatched pause costs reach
    cost = np.zeros((n + 1, m + 1))
    cost[0, 1:] = reach * np.arange(1, m + 1)
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0: boundary unmatched, 1: pause unmatched, 2: pair
    move[0, 1:] = 1
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = [cost[i - 1, j], cost[i, j - 1] + reach,
                       cost[i - 1, j - 1] + dist[i - 1, j - 1] if dist[i - 1, j - 1] <= reach else np.inf]
            move[i, j] = int(np.argmin(options))
            cost[i, j] = options[move[i, j]]
    match: dict[int, tuple[float, float]] = {}
    i, j = n, m
    while i > 0 and j > 0:
        if move[i, j] == 2:
            match[i - 1] = found[j - 1]
        i, j = (i - 1, j) if move[i, j] == 0 else (i, j - 1) if move[i, j] == 1 else (i - 1, j - 1)
    times = [t for w in words for t in (w.start, w.end)]  # start0, end0, start1, end1, ...
    anchored = [False] * len(times)
    for k, (s, e) in match.items():
        times[2 * k + 1], times[2 * k + 2] = s, e
        anchored[2 * k + 1] = anchored[2 * k + 2] = True
    anchors = [i for i, a in enumerate(anchored) if a]
    for i in range(len(times)):  # the other times between the pauses around them, then in order
        before = max((times[a] for a in anchors if a < i), default=-np.inf)
        after = min((times[a] for a in anchors if a > i), default=np.inf)
        times[i] = min(max(times[i], before), after)
    times = np.maximum.accumulate(times)
    return [Word(w.word, round(float(times[2 * k]), 3), round(float(times[2 * k + 1]), 3), w.probability)
            for k, w in enumerate(words)]


def trim_to_sound(words: list[Word], audio: np.ndarray, sample_rate: int = 16_000, floor_db: float = -35.0,
                  hop: float = 0.01, min_pause: float = 0.15) -> list[Word]:
    """Each word's span without the quiet at its edges. Cross-attention times tile the audio (a
    word ends where the next begins), so a pause goes to a word on one side of it, sometimes with
    a bit of the neighbour beyond. Frames (``hop`` s) quieter than ``floor_db`` below the loudest
    are quiet; where quiet runs of ``min_pause`` or more split a word's span, the word is the
    loudest-longest piece; its span is then cut to that piece's first and last loud frame. A
    word with no loud frame keeps its times."""
    if not words or len(audio) < int(hop * sample_rate):
        return words
    loud = _loud_frames(audio, sample_rate, floor_db, hop)
    gap = max(1, int(round(min_pause / hop)))
    out = []
    for w in words:
        a, b = int(w.start / hop), min(int(np.ceil(w.end / hop)), len(loud))
        hits = np.flatnonzero(loud[a:b])
        if len(hits) == 0:
            out.append(w)
            continue
        pieces = np.split(hits, np.flatnonzero(np.diff(hits) > gap) + 1)  # loud runs split by long pauses
        piece = max(pieces, key=len)
        start, end = (a + piece[0]) * hop, (a + piece[-1] + 1) * hop
        out.append(Word(w.word, round(max(w.start, start), 3), round(min(w.end, end), 3), w.probability))
    return out


def _clip_long_words(words: list[Word]) -> list[Word]:
    """A word at a sentence boundary may swallow the pause next to it: keep it under twice the
    median word duration (capped at 0.7 s), as openai/whisper does."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return words
    longest = 2 * min(0.7, float(np.median(durations)))
    out = list(words)
    for i, w in enumerate(out):
        if w.end - w.start <= longest:
            continue
        if w.word.strip()[-1:] in ".。!！?？" and i + 1 < len(out) and out[i + 1].start >= w.end - 0.02:
            out[i] = Word(w.word, w.start, round(w.start + longest, 3), w.probability)
        elif i == 0 or out[i - 1].word.strip()[-1:] in ".。!！?？":
            out[i] = Word(w.word, round(w.end - longest, 3), w.end, w.probability)
    return out
