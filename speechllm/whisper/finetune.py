"""Fine-tune Whisper's decoder on transcribed clips, over its frozen encoder's outputs computed once.

A voice, an accent or a vocabulary that Whisper mishears is mostly a decoder matter: its encoder's
features still hold the sounds. So only the decoder trains, and each clip's encoder output (the
30 s window transcription sees: the clip padded with silence) is computed once and kept in memory,
or in an :class:`~speechllm.encoder_cache.EncoderCache` folder that each step reads back (no memory
held); a training step costs the decoder alone: a few CPU minutes for a few hundred clips with
Whisper tiny.

Targets come in the two forms Whisper decodes, as in its own training: with timestamps
(``<|0.00|> text<|end|>``, the end where the clip's speech ends; what the transcriber reads
segments from) and without (``<|notimestamps|> text``), ``timestamp_share`` of the rows each.
The decoder's blocks, final norm and positions train; the token embedding (tied to the output
layer, two thirds of tiny's decoder) stays, so the tuned weights (:func:`decoder_weights`) are small.
Checkpoints follow :mod:`speechllm.checkpoints` (``OUT/checkpoints/step-N``); ``resume`` continues
from the newest with the same batches as an uninterrupted run.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speechllm.whisper.model import Whisper
from speechllm.whisper.tokenizer import WhisperTokenizer

TRAINED = ("blocks.", "ln.", "positional_embedding")  # the decoder's tensors that train (not its embedding)
WEIGHTS_FILE = "decoder.safetensors"  # in a checkpoint
SECONDS_PER_TIMESTAMP = 0.02


@dataclass(frozen=True)
class DecoderTuning:
    steps: int = 0  # 0: about ``epochs`` passes over the clips
    epochs: float = 8.0
    batch_size: int = 16
    lr: float = 1e-5
    warmup: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    timestamp_share: float = 0.5  # rows trained in the timestamped form
    language: str | None = None  # of clips that name none (None: a multilingual Whisper detects it)
    eval_every: int = 0  # 0: at the end only
    save_every: int = 100  # checkpoints (and at the end)
    seed: int = 0
    progress: bool = True

    def total_steps(self, clips: int) -> int:
        if self.steps:
            return self.steps
        return int(min(2000, max(50, round(self.epochs * clips / self.batch_size))))


@dataclass(frozen=True)
class Clip:
    audio: str  # a file path (the encoder cache's key) or a name for ``samples``
    text: str
    language: str | None = None  # a multilingual Whisper's language code (None: English)
    samples: np.ndarray | None = None  # 16 kHz mono; None: read from ``audio``


def trained_parameters(model: Whisper) -> dict[str, torch.nn.Parameter]:
    """The decoder's parameters that fine-tuning changes, by name."""
    return {name: p for name, p in model.decoder.named_parameters() if name.startswith(TRAINED)}


def decoder_weights(model: Whisper) -> dict[str, Tensor]:
    """The tuned part of the decoder (what a model folder keeps), as contiguous CPU tensors."""
    return {name: p.detach().cpu().contiguous() for name, p in trained_parameters(model).items()}


def load_decoder_weights(model: Whisper, tensors: dict[str, Tensor], source: str = "the weights") -> None:
    """Put :func:`decoder_weights`' tensors into ``model``; a clear error when they belong to another
    Whisper (a missing, unknown or differently shaped tensor)."""
    own = trained_parameters(model)
    if set(tensors) != set(own):
        name = sorted(set(tensors) ^ set(own))[0]
        why = "unknown" if name in tensors else "missing"
        raise ValueError(f"{source}: not this Whisper's decoder ({why} tensor {name})")
    with torch.no_grad():
        for name, p in own.items():
            if tensors[name].shape != p.shape:
                raise ValueError(f"{source}: {name} is {tuple(tensors[name].shape)}, this Whisper's "
                                 f"{tuple(p.shape)} (another model size)")
            p.copy_(tensors[name].to(p.dtype))


def write_tuned_whisper(model: Whisper, base: str, base_folder: str | Path, out: str | Path,
                        info: dict | None = None) -> Path:
    """``out`` as a Whisper model folder: ``model``'s tuned decoder part over ``base`` (a zoo name, folder
    or Hugging Face id, found again when the folder loads: :data:`speechllm.whisper.weights.TUNED_FILE`),
    with the base's tokenizer and settings files beside it (its weights are not copied)."""
    import json
    import shutil

    from speechllm.files import atomic_save_tensors, atomic_write_text
    from speechllm.whisper.weights import TUNED_DECODER, TUNED_FILE, WEIGHT_FILES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file in Path(base_folder).iterdir():
        if file.is_file() and file.name not in WEIGHT_FILES and not file.name.endswith(".safetensors"):
            shutil.copyfile(file, out / file.name)
    base = str(Path(base).resolve()) if Path(base).exists() else base  # a folder: absolute
    atomic_save_tensors(decoder_weights(model), out / TUNED_DECODER, {"base": base})
    meta = {"base": base, "decoder": TUNED_DECODER, "info": info or {}}
    atomic_write_text(out / TUNED_FILE, json.dumps(meta, indent=2) + "\n")
    return out


class WindowEncoder:
    """The frozen encoder as transcription runs it (each clip padded to Whisper's 30 s window), in the
    shape :class:`~speechllm.encoder_cache.EncoderCache` stores."""

    trainable_layers = 0

    def __init__(self, model: Whisper):
        self.model = model
        self.dim = model.config.d_model

    @torch.inference_mode()
    def frames(self, audio: Tensor, lengths: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram

        mel, frames = log_mel_spectrogram(audio.to(self.model.device), lengths.to(self.model.device),
                                          n_mels=self.model.config.n_mels, pad_to=N_SAMPLES_30S)
        hidden, mask = self.model.encoder(mel, frames)
        return hidden.to(device), mask.to(device)


def speech_end(samples: np.ndarray, sample_rate: int = 16000, floor_db: float = -35.0) -> float:
    """Seconds to the end of the last 20 ms frame within ``floor_db`` of the clip's loudest frame."""
    hop = sample_rate // 50
    n = len(samples) // hop
    if n == 0:
        return len(samples) / sample_rate
    rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)) + 1e-10
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > floor_db)[0]
    return (int(loud[-1]) + 1) * hop / sample_rate


def target_tokens(tokenizer: WhisperTokenizer, text: str, language: str | None, end: float | None) -> tuple[
        list[int], int]:
    """(tokens, prompt length): the decoder's input for ``text``, timestamped when ``end`` (seconds) is
    given; the loss covers every token after the prompt."""
    prompt = list(tokenizer.sot_sequence(language, "transcribe", timestamps=end is not None))
    body = tokenizer.encode(" " + text.strip())
    if end is not None:
        last = min(round(end / SECONDS_PER_TIMESTAMP), 1500)
        body = [tokenizer.timestamp_begin, *body, tokenizer.timestamp_begin + last]
    return prompt + body + [tokenizer.eot], len(prompt)


@dataclass(frozen=True)
class TuneResult:
    step: int  # last step done
    losses: tuple[float, ...]  # mean loss of each step of this run
    evals: tuple[dict, ...]  # what ``evaluate`` returned, with its "step"
    skipped: tuple[str, ...]  # clips left out, with the reason
    languages: dict[str, int]  # clips trained on, by language (given, or detected by a multilingual Whisper)


def tune_decoder(model: Whisper, tokenizer: WhisperTokenizer, clips: Sequence[Clip], out: str | Path,
                 options: DecoderTuning = DecoderTuning(), resume: bool = False, cache=None,
                 evaluate: Callable[[int], dict] | None = None) -> TuneResult:
    """Train ``model``'s decoder on ``clips`` in place; checkpoints in ``out``. ``cache``: an
    :class:`~speechllm.encoder_cache.EncoderCache` for the window encoder's outputs (else in memory);
    ``evaluate(step)`` runs every ``eval_every`` steps and at the end."""
    from tqdm import tqdm

    from speechllm.checkpoints import latest_checkpoint, load_optimizer_state, save_checkpoint
    from speechllm.files import atomic_save_tensors, load_tensors
    from speechllm.schedule import warmup_cosine

    frames, rows, skipped, languages = _encoded(model, tokenizer, clips, cache, options)
    if not rows:
        reasons: dict[str, int] = {}
        for line in skipped:
            reason = line.split(": ", 1)[-1]  # after the clip's name
            reasons[reason] = reasons.get(reason, 0) + 1
        raise ValueError(f"no clip left to train Whisper's decoder on ({len(skipped)} left out: "
                         + "; ".join(f"{n} x {reason}" for reason, n in reasons.items()) + ")")
    total = options.total_steps(len(rows))
    params = trained_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=options.lr, weight_decay=options.weight_decay)

    def check(folder: Path) -> None:
        from speechllm.files import check_safetensors

        check_safetensors(folder / WEIGHTS_FILE)

    start = 0
    found = latest_checkpoint(Path(out), check) if resume else None
    if found is not None:
        load_decoder_weights(model, load_tensors(found / WEIGHTS_FILE), str(found / WEIGHTS_FILE))
        start = load_optimizer_state(optimizer, found)
        print(f"resuming Whisper's decoder from {found} (step {start} of {total})", file=sys.stderr)
    order = _batches(len(rows), options.batch_size, total, options.seed)
    losses, evals = [], []
    model.decoder.train()
    every = options.eval_every or total
    try:
        with tqdm(total=total, initial=start, unit="step", disable=not options.progress, file=sys.stderr,
                  desc="Whisper decoder") as bar:
            for step in range(start, total):
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, options.lr, options.warmup, total)
                forms = random.Random(f"{options.seed}:{step}")  # per row: timestamped or not
                batch = [rows[i][1 if forms.random() < options.timestamp_share else 2] for i in order[step]]
                loss = _loss(model, [frames[rows[i][0]] for i in order[step]], batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), options.max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update()
                done = step + 1
                if done % options.save_every == 0 or done % every == 0 or done == total:
                    save_checkpoint(Path(out), done, optimizer, lambda folder: atomic_save_tensors(
                        decoder_weights(model), folder / WEIGHTS_FILE))
                if done % every == 0 or done == total:
                    if evaluate is not None:
                        model.decoder.eval()
                        evals.append({"step": done, **evaluate(done)})
                        model.decoder.train()
    finally:
        model.decoder.eval()
        for p in params.values():
            p.requires_grad_(False)
    return TuneResult(max(start, total), tuple(losses), tuple(evals), tuple(skipped), languages)


def _encoded(model: Whisper, tokenizer: WhisperTokenizer, clips: Sequence[Clip], cache,
             options: DecoderTuning) -> tuple[list[Tensor | Path], list[tuple], list[str], dict[str, int]]:
    """Each usable clip's window frames (fp16, CPU; with a ``cache``, its file there) and its row:
    (frames index, (tokens, prompt length) timestamped, the same untimed); the clips left out, with the
    reason; clips per language."""
    from tqdm import tqdm

    from speechllm.audio import load_audio

    encoder = WindowEncoder(model)
    frames: list[Tensor] = []
    rows: list[tuple] = []
    skipped: list[str] = []
    languages: dict[str, int] = {}
    batch = 8
    with tqdm(total=len(clips), unit="clip", disable=not options.progress, file=sys.stderr,
              desc="encoding clips") as bar:
        for first in range(0, len(clips), batch):
            todo, audio = [], []
            for clip in clips[first:first + batch]:
                try:
                    samples = clip.samples if clip.samples is not None else load_audio(clip.audio)
                except Exception as error:  # recorded; the rest goes on
                    skipped.append(f"{clip.audio}: {error}")
                    continue
                if len(samples) > 30 * 16000:
                    seconds = len(samples) / 16000
                    skipped.append(f"{clip.audio}: {seconds:.1f} s is over Whisper's 30 s window")
                    continue
                todo.append(clip)
                audio.append(samples)
            if todo:
                lengths = torch.tensor([len(a) for a in audio])
                padded = torch.zeros(len(audio), int(lengths.max()))
                for i, a in enumerate(audio):
                    padded[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
                if cache is not None and all(c.samples is None for c in todo):
                    paths = [c.audio for c in todo]
                    hidden, _ = cache.frames(encoder, paths, padded, lengths, torch.device("cpu"))
                else:
                    hidden, _ = encoder.frames(padded, lengths, torch.device("cpu"))
                spoken = _languages(model, tokenizer, todo, hidden, options.language)
                for i, (clip, samples, language) in enumerate(zip(todo, audio, spoken, strict=True)):
                    targets = _targets(model, tokenizer, clip.text, language, samples)
                    if isinstance(targets, str):
                        skipped.append(f"{clip.audio}: {targets}")
                        continue
                    rows.append((len(frames), *targets))
                    on_disk = cache is not None and clip.samples is None  # read back per step, not held
                    frames.append(cache.path_for(clip.audio) if on_disk
                                  else hidden[i].to(torch.float16).contiguous())
                    languages[language or "en"] = languages.get(language or "en", 0) + 1
            bar.update(len(clips[first:first + batch]))
    return frames, rows, skipped, languages


def _languages(model: Whisper, tokenizer: WhisperTokenizer, clips: Sequence[Clip], hidden: Tensor,
               default: str | None = None) -> list[str | None]:
    """Each clip's Whisper language code: its own or ``default`` (``es-ES`` read as ``es``), else, for a
    multilingual Whisper, the one it detects in the clip (as transcription would); None: English-only."""
    from speechllm.whisper.decoding import detect_language

    given = [c.language or default for c in clips]
    found = [code.lower().replace("_", "-").split("-")[0] if code else None for code in given]
    unknown = [i for i, code in enumerate(found) if code is None]
    if model.config.is_multilingual and unknown:
        with torch.inference_mode():
            audio = hidden[unknown].to(model.device)
            for i, probs in zip(unknown, detect_language(model, tokenizer, audio), strict=True):
                found[i] = next(iter(probs))
    return found


def _targets(model: Whisper, tokenizer: WhisperTokenizer, text: str, language: str | None,
             samples: np.ndarray) -> tuple[tuple[list[int], int], tuple[list[int], int]] | str:
    """(timestamped, untimed) targets of a clip, or why it cannot train (too long, a language the
    Whisper lacks). A vocabulary without timestamp tokens gets the untimed form twice."""
    try:
        untimed = target_tokens(tokenizer, text, language, None)
    except ValueError as error:
        return str(error)
    timed = target_tokens(tokenizer, text, language, speech_end(samples)) \
        if tokenizer.timestamp_begin + 1500 < model.config.n_vocab else untimed
    if len(timed[0]) > model.config.n_text_ctx:
        return f"{len(timed[0])} tokens of transcript, over the decoder's {model.config.n_text_ctx}"
    return timed, untimed


def _batches(n: int, size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices of every step: seeded shuffles, epoch after epoch (the same for a resumed run)."""
    rng = random.Random(seed)
    size = min(size, n)
    out: list[list[int]] = []
    pool: list[int] = []
    while len(out) < steps:
        if len(pool) < size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            pool += epoch
        out.append(pool[:size])
        pool = pool[size:]
    return out


def _loss(model: Whisper, frames: list[Tensor | Path], batch: list[tuple[list[int], int]]) -> Tensor:
    """Mean cross-entropy of the target tokens of ``batch`` ((tokens, prompt length) per row, over
    ``frames``' row of the same place: a tensor, or an encoder cache file), teacher-forced."""
    from speechllm.files import load_tensors

    device = model.device
    held = [f if isinstance(f, Tensor) else load_tensors(f)["hidden"] for f in frames]
    audio = torch.stack(held).to(device=device, dtype=torch.float32)
    width = max(len(tokens) for tokens, _ in batch) - 1
    inputs = torch.full((len(batch), width), model.config.n_vocab - 1, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (tokens, prompt) in enumerate(batch):
        ids = torch.tensor(tokens)
        inputs[row, : len(ids) - 1] = ids[:-1]
        labels[row, prompt - 1: len(ids) - 1] = ids[prompt:]
    logits = model.decoder(inputs.to(device), audio)
    return F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=-100)
