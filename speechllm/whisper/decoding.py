"""Batched Whisper decoding: options and results, logit filters and token decoders.

As in openai/whisper's decoding.py, the loop in :func:`decode` is small and the policy lives in
small classes: :class:`LogitFilter` subclasses edit the logits, a :class:`TokenDecoder`
(:class:`GreedyDecoder` or :class:`BeamSearchDecoder`) picks tokens and keeps the KV cache in
step with its beams. Every item of a batch stops at its own end-of-text; ``max_new_tokens``
bounds runaway repetition.

30 s padding, measured with tiny.en (CPU, 2 threads) on 5 sentences of 3-4 s, each synthesized
by flite and by espeak-ng, batch of 5, greedy; word errors over the 5 sentences:

=================  =====================  ======================
encoder input      flite (words wrong)    espeak-ng (words wrong)
=================  =====================  ======================
clip as is         578 (loops: sentence   122 (loops, "w-w-w-…")
                   repeated to the limit)
padded to 30 s     1 ("3" for "three")    12
=================  =====================  ======================

Fed the bare clip, the decoder (trained only on 30 s windows, speech followed by silence)
does not find the end: it repeats the sentence until ``max_new_tokens``; beam 5 helps only in
part (204 / 36 words wrong). So ``DecodingOptions.pad_to_30s`` defaults to True: each item is
padded to 3000 frames with its log-mel of digital silence (:func:`pad_mel_to_30s`, equal to
padding the audio with zeros before the features: same transcripts). The price is encoder
time: 1500 positions instead of ~150-200, 1.26 s vs 0.14 s for the batch of 5 (0.21 s vs
0.02 s for one clip). Use the bare, variable-length encoder (``model.encoder(mel, lengths)``)
where no pretrained decoder reads it, e.g. as features for a speech adapter.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from speechllm.whisper.model import KVCache, Whisper
from speechllm.whisper.tokenizer import WhisperTokenizer

N_FRAMES_30S = 3000
SECONDS_PER_TIMESTAMP = 0.02  # one timestamp token step (2 mel frames, 1 encoder position)


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1
    max_new_tokens: int = 224  # bound on sampled tokens (whisper: n_text_ctx // 2)
    length_penalty: float | None = None  # None: rank beams by logprob / length
    suppress_blank: bool = True  # no blank or end-of-text as the first token
    suppress_tokens: tuple[int, ...] | None = None  # None: the model's own list from its config
    language: str | None = None  # multilingual models: None = detect each item's language
    task: str = "transcribe"  # or "translate" (multilingual models)
    pad_to_30s: bool = True  # pad each clip with silence to 30 s, as Whisper was trained
    temperature: float = 0.0  # 0: greedy / beam search; > 0: sampling at this temperature
    best_of: int = 1  # sampling: this many samples of each item, the most probable kept
    timestamps: bool = False  # sample timestamp tokens under ApplyTimestampRules
    max_initial_timestamp: float | None = 1.0  # seconds: latest first timestamp
    prompt: tuple[int, ...] = ()  # text ids before <|startoftranscript|> (an initial prompt)
    seed: int = 0  # sampling's random generator

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.best_of < 1 or self.max_new_tokens < 1:
            raise ValueError("beam_size, best_of and max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be at least 0, not {self.temperature}")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {self.task!r}")


@dataclass(frozen=True)
class DecodingResult:
    text: str
    tokens: tuple[int, ...]  # sampled ids up to end-of-text, timestamps included
    avg_logprob: float
    no_speech_prob: float | None = None
    language: str | None = None
    language_probs: dict[str, float] | None = field(default=None, compare=False)
    temperature: float = 0.0

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: high (> 2.4) when a transcript loops."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def pad_mel_to_30s(mel: Tensor, mel_lengths: Tensor, n_frames: int = N_FRAMES_30S) -> tuple[Tensor, Tensor]:
    """Fill frames past each length (up to ``n_frames``) with that item's log-mel of silence.

    Whisper's features clamp to 8 (log10) below the peak and map x -> (x + 4) / 4, so zero
    samples land on ``max(peak - 2, -1.5)`` in the normalised scale.
    """
    length = mel.shape[-1]
    valid = (torch.arange(max(length, n_frames), device=mel.device) < mel_lengths[:, None])[:, None, :]
    peak = mel.masked_fill(~valid[..., :length], float("-inf")).amax(dim=(1, 2))
    floor = torch.clamp(peak - 2.0, min=-1.5)[:, None, None]
    mel = F.pad(mel, (0, max(0, n_frames - length)))
    return torch.where(valid, mel, floor.to(mel.dtype)), torch.full_like(mel_lengths, mel.shape[-1])


# ---------------------------------------------------------------- logit filters


class LogitFilter:
    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        """Edit logits [rows, vocab] in place, given the tokens so far [rows, length]."""
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    """No blank and no end-of-text as the first sampled token."""

    def __init__(self, token_ids: tuple[int, ...], sample_begin: int):
        self.token_ids, self.sample_begin = list(token_ids), sample_begin

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.token_ids] = float("-inf")


class SuppressTokens(LogitFilter):
    """Never sample the given ids, nor (with ``from_id``) any id from there up to ``until``."""

    def __init__(self, token_ids: tuple[int, ...], from_id: int | None = None, until: int | None = None):
        self.token_ids, self.from_id, self.until = list(token_ids), from_id, until

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        logits[:, self.token_ids] = float("-inf")
        if self.from_id is not None:
            logits[:, self.from_id : self.until] = float("-inf")


class ApplyTimestampRules(LogitFilter):
    """Whisper's timestamp grammar: the text starts with a timestamp (at most
    ``max_initial_index`` steps of 20 ms); timestamps come in pairs (end of one segment, start
    of the next) except just before end-of-text; they never go back, and a segment is never
    empty; and where the timestamps together outweigh the likeliest text token, a timestamp
    is taken."""

    def __init__(self, timestamp_begin: int, eot: int, sample_begin: int, max_initial_index: int | None):
        self.begin, self.eot = timestamp_begin, eot
        self.sample_begin, self.max_initial_index = sample_begin, max_initial_index

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        ninf = float("-inf")
        for k, seq in enumerate(tokens[:, self.sample_begin :].tolist()):
            last = len(seq) >= 1 and seq[-1] >= self.begin
            penultimate = len(seq) < 2 or seq[-2] >= self.begin
            if last:
                if penultimate:  # a pair just closed: text (or end-of-text) must follow
                    logits[k, self.begin :] = ninf
                else:  # a segment just ended: its pair's second timestamp, or end-of-text
                    logits[k, : self.eot] = ninf
            stamps = [t for t in seq if t >= self.begin]
            if stamps:  # no going back; after text, no zero-length segment
                floor = stamps[-1] if (last and not penultimate) else stamps[-1] + 1
                logits[k, self.begin : floor] = ninf
        if tokens.shape[1] == self.sample_begin:
            logits[:, : self.begin] = ninf
            if self.max_initial_index is not None:
                logits[:, self.begin + self.max_initial_index + 1 :] = ninf
        logprobs = F.log_softmax(logits.float(), dim=-1)
        stamp_mass = logprobs[:, self.begin :].logsumexp(dim=-1)
        best_text = logprobs[:, : self.begin].max(dim=-1).values
        logits[stamp_mass > best_text, : self.begin] = ninf


# ---------------------------------------------------------------- token decoders


class TokenDecoder:
    rows_per_item = 1  # decoder rows each audio item gets (beams, or samples to pick the best of)

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor,
               cache: KVCache) -> tuple[Tensor, bool]:
        """Append one token per row; update sum_logprobs in place; return (tokens, all done)."""
        raise NotImplementedError

    def finalize(self, tokens: Tensor, sum_logprobs: Tensor) -> list[list[tuple[list[int], float]]]:
        """Per audio item, its candidate (token sequence, sum logprob) pairs."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """The likeliest token, or (``temperature`` > 0) one sampled from the softened distribution, in
    ``samples`` independent rows per audio item (each item's best is kept: openai-whisper's best_of)."""

    def __init__(self, eot: int, temperature: float = 0.0, seed: int = 0, samples: int = 1):
        if samples > 1 and temperature == 0:
            raise ValueError("several samples of an item need a temperature above 0 (greedy rows are equal)")
        self.eot, self.temperature, self.rows_per_item = eot, temperature, samples
        self.generator: torch.Generator | None = None
        if temperature > 0:
            self.generator = torch.Generator().manual_seed(seed)

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor,
               cache: KVCache) -> tuple[Tensor, bool]:
        if self.generator is None:
            next_tokens = logits.argmax(dim=-1)
        else:
            probs = F.softmax(logits.float().cpu() / self.temperature, dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=self.generator)[:, 0].to(logits.device)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        current = logprobs.gather(1, next_tokens[:, None])[:, 0]
        done = tokens[:, -1] == self.eot
        sum_logprobs += current.masked_fill(done, 0.0)
        next_tokens = next_tokens.masked_fill(done, self.eot)
        return torch.cat([tokens, next_tokens[:, None]], dim=-1), bool((next_tokens == self.eot).all())

    def finalize(self, tokens: Tensor, sum_logprobs: Tensor) -> list[list[tuple[list[int], float]]]:
        rows = list(zip(tokens.tolist(), sum_logprobs.tolist(), strict=True))
        n = self.rows_per_item
        return [rows[i:i + n] for i in range(0, len(rows), n)]


class BeamSearchDecoder(TokenDecoder):
    """Beam search over each audio item's ``beam_size`` rows; finished beams are set aside
    until every item has ``beam_size`` of them (patience 1)."""

    def __init__(self, beam_size: int, eot: int):
        self.beam_size, self.rows_per_item, self.eot = beam_size, beam_size, eot
        self.finished: list[dict[tuple[int, ...], float]] | None = None

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor,
               cache: KVCache) -> tuple[Tensor, bool]:
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        top_logprobs, top_tokens = F.log_softmax(logits.float(), dim=-1).topk(self.beam_size + 1)
        rows, sources, scores_out = [], [], []
        prefixes, totals = tokens.tolist(), sum_logprobs.tolist()
        for i in range(n_audio):
            scores: dict[tuple[int, ...], float] = {}
            source: dict[tuple[int, ...], int] = {}
            for r in range(i * self.beam_size, (i + 1) * self.beam_size):
                for logprob, token in zip(top_logprobs[r].tolist(), top_tokens[r].tolist(), strict=True):
                    seq = (*prefixes[r], token)
                    scores[seq], source[seq] = totals[r] + logprob, r
            kept = 0
            for seq in sorted(scores, key=scores.__getitem__, reverse=True):
                if seq[-1] == self.eot:
                    if len(self.finished[i]) < self.beam_size:
                        self.finished[i].setdefault(seq, scores[seq])
                    continue
                rows.append(seq)
                sources.append(source[seq])
                scores_out.append(scores[seq])
                kept += 1
                if kept == self.beam_size:
                    break
        cache.reorder(torch.tensor(sources, device=tokens.device))
        sum_logprobs.copy_(torch.tensor(scores_out, dtype=sum_logprobs.dtype))
        done = all(len(f) >= self.beam_size for f in self.finished)
        return torch.tensor(rows, device=tokens.device), done

    def finalize(self, tokens: Tensor, sum_logprobs: Tensor) -> list[list[tuple[list[int], float]]]:
        out = []
        for i, finished in enumerate(self.finished or [{} for _ in range(tokens.shape[0] // self.beam_size)]):
            candidates = dict(finished)
            rows = range(i * self.beam_size, (i + 1) * self.beam_size)
            for r in sorted(rows, key=lambda r: float(sum_logprobs[r]), reverse=True):
                if len(candidates) >= self.beam_size:
                    break
                candidates[(*tokens[r].tolist(), self.eot)] = float(sum_logprobs[r])
            out.append([(list(seq), score) for seq, score in candidates.items()])
        self.finished = None
        return out


# ---------------------------------------------------------------- the loop


def _rank(candidates: list[tuple[list[int], float]], length_penalty: float | None) -> tuple[list[int], float]:
    def score(item: tuple[list[int], float]) -> float:
        length = len(item[0])
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return item[1] / max(penalty, 1)

    return max(candidates, key=score)


def encode(model: Whisper, mel: Tensor, mel_lengths: Tensor | None = None,
           pad_to_30s: bool = True) -> tuple[Tensor, Tensor]:
    """The encoder's output ``(audio [B, T', D], mask [B, T'])`` for log-mel ``mel [B, n_mels, T]``."""
    if mel.dim() == 2:
        mel = mel[None]
    mel = mel.to(model.device)
    if mel_lengths is None:
        mel_lengths = torch.full((mel.shape[0],), mel.shape[-1])
    mel_lengths = torch.as_tensor(mel_lengths, device=model.device)
    if pad_to_30s:
        mel, mel_lengths = pad_mel_to_30s(mel, mel_lengths)
    return model.encoder(mel, mel_lengths)


@torch.inference_mode()
def detect_language(model: Whisper, tokenizer: WhisperTokenizer, audio: Tensor,
                    audio_mask: Tensor | None = None, among: Sequence[str] = ()) -> list[dict[str, float]]:
    """Per item of encoded ``audio``, each language's probability (highest first), read from the
    decoder's next token after ``<|startoftranscript|>`` with every non-language token masked
    (and, given ``among``, every language but those)."""
    if not (model.config.is_multilingual and tokenizer.languages):
        raise ValueError("this model is English-only: it has no language to detect")
    unknown = [code for code in among if code not in tokenizer.languages]
    if unknown:
        raise ValueError(f"not Whisper language codes: {', '.join(unknown)}")
    sot = torch.full((audio.shape[0], 1), tokenizer.sot, device=audio.device)
    logits = model.decoder(sot, audio, audio_mask)[:, 0]
    codes = list(among) or list(tokenizer.languages)
    ids = [tokenizer.languages[code] for code in codes]
    probs = logits[:, ids].softmax(dim=-1).tolist()
    return [dict(sorted(zip(codes, row, strict=True), key=lambda kv: -kv[1])) for row in probs]


@torch.inference_mode()
def decode_audio(model: Whisper, tokenizer: WhisperTokenizer, audio: Tensor, audio_mask: Tensor | None,
                 options: DecodingOptions = DecodingOptions(), languages: list[str] | None = None,
                 token_decoder: TokenDecoder | None = None) -> list[DecodingResult]:
    """Decode a batch of encoded audio (see :func:`encode`) under ``options``.

    Each item gets ``options.language``, else its entry of ``languages``, else (a multilingual
    model) the language :func:`detect_language` finds, with its probabilities in the result.
    """
    n_audio = audio.shape[0]
    language_probs: list[dict[str, float] | None] = [None] * n_audio
    if not model.config.is_multilingual:
        languages = [options.language or "en"] * n_audio
    elif options.language is not None:
        languages = [options.language] * n_audio
    elif languages is None:
        language_probs = detect_language(model, tokenizer, audio, audio_mask)
        languages = [next(iter(p)) for p in language_probs]
    if token_decoder is None:
        token_decoder = (BeamSearchDecoder(options.beam_size, tokenizer.eot)
                         if options.beam_size > 1 and options.temperature == 0
                         else GreedyDecoder(tokenizer.eot, options.temperature, options.seed,
                                            options.best_of if options.temperature > 0 else 1))
    beam = token_decoder.rows_per_item
    audio = audio.repeat_interleave(beam, dim=0)
    audio_mask = None if audio_mask is None else audio_mask.repeat_interleave(beam, dim=0)

    max_prompt = model.config.n_text_ctx // 2 - 1
    before = (tokenizer.sot_prev, *options.prompt[-max_prompt:]) if options.prompt else ()
    prompts = [(*before, *tokenizer.sot_sequence(lang, options.task, options.timestamps))
               for lang in languages]
    sample_begin, sot_index = len(prompts[0]), len(before)
    filters = _logit_filters(model, tokenizer, options, sample_begin)

    tokens = torch.tensor(prompts, device=model.device).repeat_interleave(beam, dim=0)
    sum_logprobs = torch.zeros(audio.shape[0], device=model.device)
    cache = KVCache()
    no_speech_probs = [None] * n_audio
    for step in range(min(options.max_new_tokens, model.config.n_text_ctx - sample_begin)):
        logits = model.decoder(tokens if step == 0 else tokens[:, -1:], audio, audio_mask, cache)
        if step == 0:
            probs = logits[::beam, sot_index].softmax(dim=-1)
            no_speech_probs = probs[:, tokenizer.no_speech].tolist()
        logits = logits[:, -1]
        for logit_filter in filters:
            logit_filter.apply(logits, tokens)
        tokens, done = token_decoder.update(tokens, logits, sum_logprobs, cache)
        if done:
            break

    results = []
    finals = token_decoder.finalize(tokens, sum_logprobs)
    for i, (candidates, no_speech_prob) in enumerate(zip(finals, no_speech_probs, strict=True)):
        candidates = [(_until_eot(seq[sample_begin:], tokenizer.eot), score) for seq, score in candidates]
        best, score = _rank(candidates, options.length_penalty)
        results.append(DecodingResult(
            text=tokenizer.decode(best).strip(), tokens=tuple(best), avg_logprob=score / (len(best) + 1),
            no_speech_prob=no_speech_prob, language=languages[i] if model.config.is_multilingual else "en",
            language_probs=language_probs[i], temperature=options.temperature))
    return results


def _logit_filters(model: Whisper, tokenizer: WhisperTokenizer, options: DecodingOptions,
                   sample_begin: int) -> list[LogitFilter]:
    suppress = options.suppress_tokens if options.suppress_tokens is not None else tokenizer.suppress_tokens
    n_vocab = model.config.n_vocab
    # specials never; timestamps only under the timestamp rules
    until = tokenizer.timestamp_begin if options.timestamps else None
    filters: list[LogitFilter] = [SuppressTokens(_below(suppress, n_vocab), tokenizer.eot + 1, until)]
    if options.suppress_blank:
        filters.append(SuppressBlank(_below(tokenizer.begin_suppress_tokens, n_vocab), sample_begin))
    if options.timestamps:
        max_initial = (None if options.max_initial_timestamp is None
                       else round(options.max_initial_timestamp / SECONDS_PER_TIMESTAMP))
        filters.append(ApplyTimestampRules(tokenizer.timestamp_begin, tokenizer.eot, sample_begin,
                                           max_initial))
    return filters


def decode(model: Whisper, tokenizer: WhisperTokenizer, mel: Tensor, mel_lengths: Tensor | None = None,
           options: DecodingOptions = DecodingOptions(),
           token_decoder: TokenDecoder | None = None) -> list[DecodingResult]:
    """Transcribe a batch of log-mel inputs ``mel [B, n_mels, T]`` with valid ``mel_lengths [B]``.

    ``token_decoder`` overrides the strategy the options pick (greedy, sampling at a temperature,
    or beam search when ``beam_size > 1``). Returns one :class:`DecodingResult` per item, in order.
    """
    with torch.inference_mode():
        audio, audio_mask = encode(model, mel, mel_lengths, options.pad_to_30s)
    return decode_audio(model, tokenizer, audio, audio_mask, options, token_decoder=token_decoder)


def _below(ids: tuple[int, ...], n_vocab: int) -> tuple[int, ...]:
    return tuple(i for i in ids if 0 <= i < n_vocab)


def _until_eot(seq: list[int], eot: int) -> list[int]:
    return seq[: seq.index(eot)] if eot in seq else seq
