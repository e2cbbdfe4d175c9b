"""Training a speech-LLM on mixed-task manifests: the loop behind ``speechllm finetune``.

Read top-down: options → evaluation → checkpoints → the run (:class:`Trainer`: data → setup →
batches → loop, with evaluation and saving). What each manifest task teaches, and how it is scored,
is the task registry's (``speechllm.speechlm.tasks``); the data (validation, dataset, resumable
batch order) is ``speechllm.train_data``'s; how checkpoints are written and found,
``speechllm.checkpoints``'.

* Every bad row of both manifests (bad JSON, missing fields, unreadable or empty audio, clips
  longer than the encoder takes) is reported, ``FILE:LINE: reason``, before a model is loaded.
* Features are computed on the fly from the audio, on the training device.
* Only the adapter and LoRA train (and the encoder's top blocks with ``train_encoder_layers``);
  the rest of the encoder and the LLM stay frozen. AdamW, linear warm-up then cosine decay to
  10 %, gradient clipping, gradient accumulation.
* Checkpoints: ``OUT/checkpoints/step-N/`` is a full model folder (config.json,
  adapter.safetensors, encoder.safetensors with trained encoder layers, lora/) plus the optimizer
  and trainer state (``speechllm.checkpoints``); the newest two are kept, and ``OUT/`` itself is
  refreshed as the latest model folder. ``resume`` starts from the newest intact checkpoint at its
  step, with the same batch order as an uninterrupted run.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs as DDP, one process per device; each rank
  reads its own shard of every batch order and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from speechllm import checkpoints
from speechllm.device import pick_device
from speechllm.encoder_cache import EncoderCache
from speechllm.manifest import ManifestRow
from speechllm.schedule import warmup_cosine
from speechllm.speechlm.generate import GenerationOptions
from speechllm.speechlm.io import check_speechlm_files, load_speechlm, save_speechlm
from speechllm.speechlm.model import SpeechLLM, SpeechLLMConfig
from speechllm.speechlm.tasks import (  # noqa: F401  (answer_correct, follows_instruction: re-exported)
    TASKS,
    Example,
    answer_correct,
    example_of,
    follows_instruction,
)
from speechllm.train_data import (
    BatchOrder,
    SpeechDataset,
    TextMix,
    augment_config,
    check_manifests,
    collate,
    eval_subset,
    read_text_rows,
)

# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class TrainConfig:
    """A training run: the model to build (``model``; a checkpoint's or a given model's own config
    wins over it), the data, and how to train."""

    train: str
    out: str
    eval: str | None = None
    model: SpeechLLMConfig = field(default_factory=SpeechLLMConfig)
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    max_grad_norm: float = 1.0
    ctc_weight: float = 1.0
    augment: dict[str, Any] | None = field(default=None, hash=False)  # AugmentConfig fields; None: off
    encoder_cache: str | None = None  # folder for the frozen encoder's outputs (see encoder_cache.py)
    lm_weight: float = 1.0  # 0: CTC loss only, the LLM never runs in training (ctc-posterior)
    freeze_adapter: bool = False  # train the LoRA alone: a base model's adapter (and CTC transcript) stays
    # text-side training (ctc-posterior): rows whose spoken text is known, with simulated units for audio
    text_train: str | None = None  # a manifest-like JSON lines file of text rows (no audio needed)
    text_share: float = 0.0  # share of micro-batches drawn from text_train (1.0: text only)
    text_noise: dict[str, Any] | None = field(default=None, hash=False)  # UnitNoise fields; None: defaults
    eval_every: int = 500
    save_every: int | None = None  # default: eval_every
    eval_max_rows: int = 200
    eval_batch_size: int = 8
    max_new_tokens: int = 128
    max_seconds: float | None = None  # longest clip (default: what the encoder takes, 30 s for Whisper)
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    def model_config(self) -> SpeechLLMConfig:
        """``model`` as built here: a CTC-only run (``lm_weight`` 0) transcribes with its CTC path."""
        return self.model if self.lm_weight else replace(self.model, asr_decoder="ctc")


@dataclass(frozen=True)
class TrainResult:
    out: Path
    step: int  # last step done
    start_step: int  # where this run began (> 0 when resumed)
    losses: tuple[float, ...]  # mean training loss of each optimizer step of this run
    evals: tuple[dict[str, Any], ...]


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: SpeechLLM, rows: Sequence[ManifestRow], batch_size: int = 8,
             max_new_tokens: int = 128, progress: bool = False,
             group: Callable[[ManifestRow], str | None] | None = None,
             quote_answers: bool = True) -> dict[str, Any]:
    """Greedy replies to ``rows``; each task's own metrics (the task registry's), and IFR per task
    and overall. ``group``: a name per row (e.g. the kind of question); each task's metrics are then
    also given per group, as ``METRIC/GROUP`` (``qa_acc/spoken-question/arithmetic``).
    ``quote_answers``: as ``GenerationOptions.quote_answers`` (False: ``ask --free-answer``)."""
    examples = [example_of(r) for r in rows]
    options = GenerationOptions(max_new_tokens=max_new_tokens, quote_answers=quote_answers)
    replies = _replies(model, rows, examples, batch_size, options, progress)
    metrics: dict[str, Any] = {"rows": len(rows)}
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.task, []).append(i)
    followed = [follows_instruction(e.task, r, e.spoken) for e, r in zip(examples, replies, strict=True)]
    for task, idx in by_task.items():
        metrics[f"ifr/{task}"] = float(np.mean([followed[i] for i in idx]))
        metric = TASKS[task].metric
        if metric is None:
            continue
        metrics.update(metric(task, [examples[i].reply for i in idx], [replies[i] for i in idx]))
        for name in sorted({group(rows[i]) for i in idx} - {None}) if group else ():
            part = [i for i in idx if group(rows[i]) == name]
            scores = metric(task, [examples[i].reply for i in part], [replies[i] for i in part])
            metrics.update({f"{key}/{name}": value for key, value in scores.items()})
    metrics["ifr"] = float(np.mean(followed)) if followed else 0.0
    metrics["examples"] = [{"task": e.task, "ref": e.reply, "hyp": r}
                           for e, r in list(zip(examples, replies, strict=True))[:5]]
    return metrics


def _replies(model: SpeechLLM, rows: Sequence[ManifestRow], examples: list[Example], batch_size: int,
             options: GenerationOptions, progress: bool) -> list[str]:
    from tqdm import tqdm

    from speechllm.audio import load_audio

    was_training = model.training
    model.eval()
    replies: list[str] = []
    bar = tqdm(total=len(rows), desc="evaluating", unit="utt", disable=not progress, file=sys.stderr)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        audio = [load_audio(r.audio) for r in chunk]
        out = model.generate(audio, [e.instruction for e in examples[start : start + batch_size]], options)
        replies += [g.text for g in out]
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return replies


# ---------------------------------------------------------------- checkpoints (speechllm.checkpoints)


def save_checkpoint(model: SpeechLLM, optimizer: torch.optim.Optimizer, out: Path, step: int,
                    config: TrainConfig, keep: int = 2) -> Path:
    """``OUT/checkpoints/step-N`` as a model folder plus the optimizer; then ``OUT`` itself is
    refreshed as the latest model folder. The files the model carries beside its weights (memories,
    phrase book, draft head) are read from the new checkpoint from then on, so that the checkpoint a
    run resumed from may be rotated out."""
    folder = checkpoints.save_checkpoint(out, step, optimizer,
                                         lambda tmp: save_speechlm(model, tmp, info={"step": step}),
                                         {"config": asdict(config)}, keep)
    model.folder = folder
    save_speechlm(model, out, info={"step": step, "train": config.train})
    return folder


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest intact checkpoint in ``OUT``; each newer, damaged one is skipped with a warning."""
    return checkpoints.latest_checkpoint(Path(out), check_speechlm_files)


# ---------------------------------------------------------------- the run


def train(config: TrainConfig, model: SpeechLLM | None = None) -> TrainResult:
    """Run (or resume) training; ``model`` may be passed in already built (tests, notebooks)."""
    return Trainer(config, model).run()


@dataclass(frozen=True)
class TrainData:
    train: list[ManifestRow]
    eval: list[ManifestRow]  # the evaluated subset
    text: list[ManifestRow]  # text rows (simulated units stand in for their audio)
    mix: TextMix  # which micro-batches are text


def load_data(config: TrainConfig, world: int = 1) -> TrainData:
    """Every row of every input checked (all bad rows in one error) before anything heavy."""
    if not config.train and config.text_share < 1:
        raise ValueError("a training manifest is needed unless every batch is text (text_share 1)")
    if config.text_share > 0 and not config.text_train:
        raise ValueError("text_share > 0 needs text rows (--text-train FILE)")
    manifests = ([config.train] if config.train else []) + ([config.eval] if config.eval else [])
    max_seconds = config.max_seconds if config.max_seconds is not None else (
        30.0 if config.model.encoder_kind == "whisper" else None)
    rows = check_manifests(manifests, max_seconds) if manifests else []
    train_rows = rows.pop(0) if config.train else []
    eval_rows = eval_subset(rows[0], config.eval_max_rows, config.seed) if config.eval else []
    text_rows = read_text_rows(config.text_train) if config.text_share > 0 else []
    if text_rows and world > 1:
        raise ValueError("text-side training runs in one process (no DDP)")
    return TrainData(train_rows, eval_rows, text_rows, TextMix(config.text_share, config.seed))


def _distributed() -> tuple[int, int, int]:
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def lr_at(step: int, config: TrainConfig) -> float:
    return warmup_cosine(step, config.lr, min(config.warmup, max(config.steps // 10, 1)), config.steps)


@dataclass
class StepLoss:
    """One optimizer step's losses (means over its micro-batches) and what it saw."""

    total: float = 0.0
    lm: float = 0.0
    ctc: float = 0.0
    utterances: int = 0
    audio_seconds: float = 0.0


class Trainer:
    """One run, read top-down: data (every bad row first) → setup (model, optimizer, the step to
    start at) → batches → the loop, whose steps evaluate and save on schedule."""

    def __init__(self, config: TrainConfig, model: SpeechLLM | None = None):
        self.config, self.out = config, Path(config.out)
        self.rank, self.world, local_rank = _distributed()
        self.data = load_data(config, self.world)
        self.device = pick_device(config.device, index=local_rank)
        self.given = model

    def run(self) -> TrainResult:
        started_group = self.world > 1 and not torch.distributed.is_initialized()
        if started_group:  # the backend follows the training device: --device cpu on a GPU host needs gloo
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        try:
            self.setup()
            self.setup_batches()
            return self.loop()
        finally:
            if started_group:
                torch.distributed.destroy_process_group()

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        checkpoint = latest_checkpoint(self.out) if self.config.resume else None
        if self.config.resume and checkpoint is None and self.rank == 0:
            print(f"no checkpoint in {self.out / checkpoints.CHECKPOINTS}: starting from step 0",
                  file=sys.stderr)
        torch.manual_seed(self.config.seed)
        self.model = self._model(checkpoint).to(self.device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.start = checkpoints.load_optimizer_state(self.optimizer, checkpoint) if checkpoint else 0
        if checkpoint is not None and self.start >= self.config.steps and self.rank == 0:
            # killed between the last checkpoint and OUT's refresh: nothing left to train, OUT still stale
            save_speechlm(self.model, self.out, info={"step": self.start, "train": self.config.train})
        self.net: Any = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def _model(self, checkpoint: Path | None) -> SpeechLLM:
        """The checkpoint's model, the one given, or a new one from the config (its CTC vocabulary
        fitted to the training text); with ``freeze_adapter``, only its LoRA trains."""
        config, built_here = self.config, False
        if checkpoint is not None:
            model = load_speechlm(checkpoint)
        elif self.given is not None:
            model = self.given
        else:
            built_here, model = True, SpeechLLM.build(config.model_config())
            spoken = [t for r in [*self.data.train, *self.data.text] if (t := example_of(r).spoken)]
            model.adapter.fit_vocabulary(model.tokenizer, spoken)
        if config.freeze_adapter:
            if not model.has_lora or config.lm_weight == 0:
                raise ValueError("a frozen adapter leaves only LoRA to train: give LoRA (--lora-rank) and "
                                 "the LLM's loss (--lm-weight > 0)")
            if built_here:
                raise ValueError("--freeze-adapter keeps a trained adapter as it is: start from one (--base)")
            model.adapter.requires_grad_(False)
        return model

    # ---------------------------------------------------------------- batches

    def setup_batches(self) -> None:
        """Speech and text batch orders that start where ``self.start`` left off, the encoder cache,
        and the loader of speech batches."""
        config, data = self.config, self.data
        speech_done = data.mix.speech_before(self.start * config.grad_accum)
        order = BatchOrder(max(len(data.train), 1), config.batch_size, config.seed, speech_done, self.rank,
                           self.world)
        self.text_order = BatchOrder(max(len(data.text), 1), config.batch_size, config.seed + 1)
        self.simulator = _unit_simulator(self.model, config.text_noise) if data.text else None
        if config.encoder_cache and config.augment is not None:
            raise ValueError("--encoder-cache and --augment exclude each other (augmented audio differs)")
        # keyed by the encoder of the model being trained (a checkpoint's or a base's), never the config's
        # default: another encoder's features under this one's key would poison the cache
        self.cache = EncoderCache(config.encoder_cache, self.model.config.encoder,
                                  self.model.encoder.trainable_layers) if config.encoder_cache else None
        dataset = SpeechDataset(data.train, augment_config(config.augment), config.seed)
        self.loader = iter(DataLoader(dataset, batch_sampler=order, collate_fn=collate,
                                      num_workers=config.num_workers,
                                      persistent_workers=config.num_workers > 0))
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            n_train = sum(p.numel() for p in self.params)
            print(f"{len(data.train)} training rows, {len(data.eval)} eval rows; {n_train / 1e6:.2f} M "
                  f"trainable parameters; steps {self.start}..{config.steps}", file=sys.stderr)

    # ---------------------------------------------------------------- the loop

    def loop(self) -> TrainResult:
        config = self.config
        save_every = config.save_every or config.eval_every
        report = Progress(config, self.out, self.start, self.rank == 0)
        losses: list[float] = []
        evals: list[dict[str, Any]] = []
        try:
            for step in range(self.start, config.steps):
                loss = self.step(step)
                losses.append(loss.total)
                done = step + 1
                report.step(done, loss, lr_at(step, config))
                last = done == config.steps
                if self.data.eval and (done % config.eval_every == 0 or last):
                    evals += self.evaluate(done, report)
                if done % save_every == 0 or last:
                    self.save(done)
        finally:
            report.close()
        return TrainResult(self.out, config.steps, self.start, tuple(losses), tuple(evals))

    def step(self, step: int) -> StepLoss:
        """One optimizer step over ``grad_accum`` micro-batches."""
        config, loss = self.config, StepLoss()
        for k in range(config.grad_accum):
            self.micro_batch(step * config.grad_accum + k, k == config.grad_accum - 1, loss)
        torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def micro_batch(self, m: int, last: bool, loss: StepLoss) -> None:
        """Micro-batch ``m``'s loss, backpropagated (scaled by ``grad_accum``) and added to ``loss``."""
        config, accum = self.config, self.config.grad_accum
        if self.data.mix.is_text(m):  # simulated units stand in for the audio (text-side training)
            examples = [example_of(self.data.text[i]) for i in self.text_order.batch(m)]
            result = _text_loss(self.model, self.simulator, examples, [config.seed, m])
            (result.loss / accum).backward()
        else:
            batch = next(self.loader)
            examples = batch["examples"]
            frames = self.cache.frames(self.model.encoder, batch["paths"], batch["audio"], batch["lengths"],
                                       self.model.device) if self.cache else None
            with self.net.no_sync() if self.world > 1 and not last else nullcontext():
                result = self.net(batch["audio"], batch["lengths"], [e.instruction for e in examples],
                                  [e.reply for e in examples], [e.spoken for e in examples],
                                  config.ctc_weight, config.lm_weight, frames)
                (result.loss / accum).backward()
            loss.audio_seconds += float(batch["lengths"].sum()) / 16000
        loss.total += float(result.loss.detach()) / accum
        loss.lm += float(result.lm_loss) / accum
        loss.ctc += float(result.aux_loss or 0.0) / accum
        loss.utterances += len(examples)

    def evaluate(self, done: int, report: Progress) -> list[dict[str, Any]]:
        """Rank 0 evaluates (the others wait); the metrics, in a list of one or none."""
        metrics = []
        if self.rank == 0:
            metrics.append({"step": done, **evaluate(self.model, self.data.eval, self.config.eval_batch_size,
                                                     self.config.max_new_tokens)})
            report.evaluation(metrics[0])
        if self.world > 1:
            torch.distributed.barrier()
        return metrics

    def save(self, done: int) -> None:
        if self.rank == 0:
            save_checkpoint(self.model, self.optimizer, self.out, done, self.config)
        if self.world > 1:
            torch.distributed.barrier()


class Progress:
    """The progress bar and ``OUT/train_log.jsonl`` (rank 0 alone writes)."""

    def __init__(self, config: TrainConfig, out: Path, start: int, writes: bool):
        from tqdm import tqdm

        self.config = config
        self.bar = tqdm(total=config.steps, initial=start, disable=not config.progress or not writes,
                        file=sys.stderr, unit="step", dynamic_ncols=True)
        self.log = open(out / "train_log.jsonl", "a", encoding="utf-8") if writes else None
        self.t0, self.utterances, self.audio_seconds = time.perf_counter(), 0, 0.0

    def step(self, done: int, loss: StepLoss, lr: float) -> None:
        self.utterances += loss.utterances
        self.audio_seconds += loss.audio_seconds
        elapsed = time.perf_counter() - self.t0
        self.bar.set_postfix(loss=f"{loss.total:.3f}", ctc=f"{loss.ctc:.3f}",
                             utt_s=f"{self.utterances / elapsed:.1f}",
                             audio_x=f"{self.audio_seconds / elapsed:.1f}")
        self.bar.update(1)
        if self.log and (done % self.config.log_every == 0 or done == self.config.steps):
            self._write({"step": done, "loss": loss.total, "lm_loss": loss.lm, "ctc_loss": loss.ctc, "lr": lr,
                         "utt_per_s": self.utterances / elapsed})

    def evaluation(self, metrics: dict[str, Any]) -> None:
        self._write({"eval": metrics})
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        sacrebleu = f" (BLEU: sacrebleu {metrics['bleu_signature']})" if "bleu" in metrics else ""
        self.bar.write(f"step {metrics['step']}: {shown}{sacrebleu}")

    def _write(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()


# ---------------------------------------------------------------- text-side training


def _unit_simulator(model: SpeechLLM, noise: dict[str, Any] | None):
    from speechllm.speechlm.simulated_units import UnitNoise, UnitSimulator, confusable_units

    if not hasattr(model.adapter, "unit_embeddings"):
        raise ValueError(f"text-side training needs the ctc-posterior adapter, not {model.config.adapter!r}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in (noise or {}).items()}
    spec = UnitNoise(**options)
    return UnitSimulator(model.ctc_vocab, confusable_units(model.adapter, spec.neighbours), spec)


def _text_loss(model: SpeechLLM, simulator, examples: list[Example], seed: list[int]):
    """The LLM loss of text examples whose audio is simulated CTC units (seeded per item); a transcript
    a real hearing wrote (``heard``) is read exactly, as at inference."""
    from speechllm.speechlm.simulated_units import exact_units, simulated_output

    units = [exact_units(simulator.vocab.encode(e.spoken)) if e.heard
             else simulator(e.spoken, np.random.default_rng([*seed, j])) for j, e in enumerate(examples)]
    return model.forward_units(simulated_output(model.adapter, units), [e.instruction for e in examples],
                               [e.reply for e in examples])
