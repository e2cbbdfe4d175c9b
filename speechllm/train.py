"""Training a speech-LLM on mixed-task manifests: the loop behind ``speechllm finetune``.

Read top-down: options → what each manifest task teaches → data (validation, dataset, resumable
batch order, collate) → evaluation (WER/CER, BLEU, IFR, QA accuracy) → checkpoints → the loop.

* Every bad row of both manifests (bad JSON, missing fields, unreadable or empty audio, clips
  longer than the encoder takes) is reported, ``FILE:LINE: reason``, before a model is loaded.
* Features are computed on the fly from the audio, on the training device.
* Only the adapter and LoRA train (and the encoder's top blocks with ``train_encoder_layers``);
  the rest of the encoder and the LLM stay frozen. AdamW, linear warm-up then cosine decay to
  10 %, gradient clipping, gradient accumulation.
* Checkpoints: ``OUT/checkpoints/step-N/`` is a full model folder (config.json,
  adapter.safetensors, encoder.safetensors with trained encoder layers, lora/) plus
  ``optimizer.safetensors`` and ``trainer_state.json``, built in a temporary folder and renamed
  into place; the newest two are kept, and ``OUT/`` itself is refreshed as the latest model
  folder. ``resume`` starts from the newest complete checkpoint at its step, with the same batch
  order as an uninterrupted run.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs as DDP, one process per device; each rank
  reads its own shard of every batch order and rank 0 alone evaluates and writes.

Instruction-following rate (IFR), per evaluated row: the reply is non-empty and does the kind of
thing asked. We know what the audio says (the transcript, or the source text for translation);
call *closeness* the character error rate of the reply against it. For ``transcribe`` the reply
follows the instruction when it is a transcript, not a chat reply: closeness < 0.5 and at most
twice the transcript's length (+10 characters). For every other task (translate, answer) it
follows when it is *not* merely a transcript of the audio: closeness >= 0.5 (the SLAM-LLM failure
mode: an ASR-trained model transcribes whatever it is asked). Rows whose spoken text is unknown
count as followed when the reply is non-empty.
QA accuracy: the normalised answer appears, as whole words, in the normalised reply.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from speechllm.encoder_cache import EncoderCache
from speechllm.manifest import ManifestError, ManifestRow, validate_manifest
from speechllm.schedule import warmup_cosine
from speechllm.speechlm.generate import GenerationOptions
from speechllm.speechlm.io import (
    atomic_save_tensors,
    atomic_write_text,
    check_safetensors,
    check_speechlm_files,
    load_speechlm,
    load_tensors,
    read_json,
    replace_folder,
    save_speechlm,
)
from speechllm.speechlm.model import (
    LANGUAGES,
    LoraSpec,
    PromptFormat,
    SpeechLLM,
    SpeechLLMConfig,
    instruction,
    pad_audio,
)

# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class TrainConfig:
    train: str
    out: str
    eval: str | None = None
    adapter: str = "alignformer"
    adapter_options: dict[str, Any] = field(default_factory=dict, hash=False)
    encoder: str = "whisper-tiny.en"
    encoder_kind: str = "whisper"
    train_encoder_layers: int = 0  # fine-tune the encoder's top blocks too (0: frozen encoder)
    llm: str = "smollm2-135m-instruct"
    quant: str | None = None
    lora_rank: int = 0  # 0: no LoRA
    lora_alpha: float | None = None  # default 2 x rank
    audio_first: bool = True
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
        lora = None
        if self.lora_rank > 0:
            lora = LoraSpec(rank=self.lora_rank, alpha=self.lora_alpha or 2.0 * self.lora_rank)
        return SpeechLLMConfig(encoder=self.encoder, encoder_kind=self.encoder_kind,
                               encoder_trainable_layers=self.train_encoder_layers, adapter=self.adapter,
                               adapter_options=dict(self.adapter_options), llm=self.llm, quant=self.quant,
                               lora=lora, prompt=PromptFormat(audio_first=self.audio_first),
                               asr_decoder="ctc" if self.lm_weight == 0 else "llm")


@dataclass(frozen=True)
class TrainResult:
    out: Path
    step: int  # last step done
    start_step: int  # where this run began (> 0 when resumed)
    losses: tuple[float, ...]  # mean training loss of each optimizer step of this run
    evals: tuple[dict[str, Any], ...]


# ---------------------------------------------------------------- what each manifest task teaches


@dataclass(frozen=True)
class Example:
    task: str  # a speechllm.speechlm TASKS name
    instruction: str
    reply: str
    spoken: str | None  # what the audio says, when known: CTC target and IFR reference


def _reply(row: ManifestRow) -> str:
    return (row.answer or row.text or "").strip()


def _asr(row: ManifestRow) -> Example:
    return Example("transcribe", instruction("transcribe"), row.text.strip(), row.text)


def _st(row: ManifestRow) -> Example:
    target = LANGUAGES.get(row.extra.get("target_lang", "en"), "English")
    return Example("translate", instruction("translate", target=target), row.text.strip(),
                   row.extra.get("source_text"))


def _sqa(row: ManifestRow) -> Example:
    spoken = row.text if row.answer else None  # with an answer, text is what the audio says
    if row.prompt:  # a text question about a spoken passage
        return Example("passage-question", instruction("passage-question", row.prompt), _reply(row), spoken)
    return Example("spoken-question", instruction("spoken-question"), _reply(row), spoken)


def _instruct(row: ManifestRow) -> Example:
    return Example("instruct", instruction("instruct", row.prompt), _reply(row), row.extra.get("transcript"))


ROW_TASKS: dict[str, Callable[[ManifestRow], Example]] = {
    "asr": _asr, "tts": _asr, "st": _st, "sqa": _sqa, "instruct": _instruct,
}


def example_of(row: ManifestRow) -> Example:
    return ROW_TASKS[row.task](row)


# ---------------------------------------------------------------- data


def read_text_rows(path: str | Path) -> list[ManifestRow]:
    """Text rows for text-side training: manifest rows without audio, whose spoken text is known
    (``asr``/``tts``: text; ``st``: extra ``source_text``; ``sqa``: text with an answer; ``instruct``:
    extra ``transcript``). Every bad row is reported (``FILE:LINE: reason``) in one ManifestError."""
    rows, errors = [], []
    keys = ("text", "prompt", "answer", "lang")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{n}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict) or obj.get("task") not in ROW_TASKS:
                task = obj.get("task") if isinstance(obj, dict) else None
                errors.append(f"{path}:{n}: task {task!r} is not one of {', '.join(ROW_TASKS)}")
                continue
            if any(obj.get(k) is not None and not isinstance(obj[k], str) for k in keys):
                errors.append(f"{path}:{n}: {', '.join(keys)} must be strings")
                continue
            extra = {k: v for k, v in obj.items() if k not in keys and k not in ("task", "audio")}
            row = ManifestRow(audio="", task=obj["task"], extra=extra, **{k: obj.get(k) for k in keys})
            example = example_of(row)
            if not (example.spoken or "").strip() or not example.reply:
                errors.append(f"{path}:{n}: a text row needs its spoken text and a reply")
                continue
            rows.append(row)
    if not rows and not errors:
        errors.append(f"{path}: no rows")
    if errors:
        raise ManifestError(str(path), errors)
    return rows


@dataclass(frozen=True)
class TextMix:
    """Which micro-batches come from the text rows: each one independently with probability
    ``share``, seeded, so that any micro-batch's source (and the count of speech batches before it,
    where a resumed run's speech order starts) can be computed."""

    share: float
    seed: int

    def is_text(self, m: int) -> bool:
        if self.share <= 0 or self.share >= 1:
            return self.share >= 1
        return random.Random(self.seed * 1_000_003 + m).random() < self.share

    def speech_before(self, m: int) -> int:
        return sum(not self.is_text(i) for i in range(m))


def check_manifests(paths: Sequence[str | Path], max_seconds: float | None) -> list[list[ManifestRow]]:
    """Rows of each manifest, or one ManifestError listing every bad row of all of them."""
    all_rows, errors = [], []
    for path in paths:
        rows, problems = validate_manifest(path, check_audio=True)
        where = re.compile(rf"{re.escape(str(path))}:(\d+):")
        bad_lines = {int(m.group(1)) for p in problems if (m := where.match(p))}
        with open(path, "rb") as f:
            good_lines = [n for n, line in enumerate(f, 1) if line.strip() and n not in bad_lines]
        for line, row in zip(good_lines, rows, strict=True):
            if max_seconds is not None and row.duration is not None and row.duration > max_seconds:
                problems.append(f"{path}:{line}: audio {row.audio} is {row.duration:.1f} s, over the "
                                f"encoder's {max_seconds:g} s (cut it with speechllm.segment first)")
            elif row.task not in ROW_TASKS:
                problems.append(f"{path}:{line}: task {row.task!r} is not trained here")
        if not rows and not problems:
            problems.append(f"{path}: no rows")
        errors += sorted(problems, key=lambda p: int(m.group(1)) if (m := re.search(r":(\d+):", p)) else 0)
        all_rows.append(rows)
    if errors:
        raise ManifestError(", ".join(map(str, paths)), errors)
    return all_rows


def augment_config(options: dict[str, Any] | None):
    """``AugmentConfig`` from a dict of its fields (lists become the (low, high) tuples), or None."""
    if options is None:
        return None
    from speechllm.augment import AugmentConfig

    known = set(AugmentConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"augmentation has no option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


class SpeechDataset(Dataset):
    """Rows → (16 kHz audio, example); with ``augment`` (training only), each draw of an item is
    perturbed afresh (speed, noise, gain, reverb), seeded by (seed, item, draw)."""

    def __init__(self, rows: Sequence[ManifestRow], augment=None, seed: int = 0):
        self.rows = list(rows)
        self.augment = augment
        self.seed = seed
        self.draws = [0] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Example, str]:
        from speechllm.audio import load_audio

        row = self.rows[index]
        audio = load_audio(row.audio)
        if self.augment is not None:
            from speechllm.augment import augment

            self.draws[index] += 1
            rng = np.random.default_rng([self.seed, index, self.draws[index]])
            audio = augment(audio, rng, self.augment)
        return audio, example_of(row), row.audio


def collate(items: list[tuple[np.ndarray, Example, str]]) -> dict[str, Any]:
    audio, lengths = pad_audio([item[0] for item in items])
    return {"audio": audio, "lengths": lengths, "examples": [item[1] for item in items],
            "paths": [item[2] for item in items]}


class BatchOrder(Sampler):
    """Micro-batch m of an endless, seeded shuffle; any m can be computed, so a resumed run
    picks up exactly where it stopped. Each rank takes every world-th index of the epoch."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        self.n, self.batch_size, self.seed, self.start, self.rank, self.world = (
            n_rows, batch_size, seed, start, rank, world)
        self.per_rank = math.ceil(n_rows / world)
        self.per_epoch = math.ceil(self.per_rank / batch_size)

    def batch(self, m: int) -> list[int]:
        epoch, i = divmod(m, self.per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        order = (order * (self.per_rank * self.world // self.n + 1))[: self.per_rank * self.world]
        mine = order[self.rank :: self.world]
        return mine[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            yield self.batch(m)
            m += 1


# ---------------------------------------------------------------- evaluation


def follows_instruction(task: str, reply: str, spoken: str | None) -> bool:
    """The IFR test of one reply (see the module docstring)."""
    from speechllm.metrics import char_error_rate
    from speechllm.text_normalize import normalize

    if not normalize(reply):
        return False
    if not spoken or not normalize(spoken):
        return True
    closeness = char_error_rate([spoken], [reply]).rate
    if task == "transcribe":
        return closeness < 0.5 and len(normalize(reply)) <= 2 * len(normalize(spoken)) + 10
    return closeness >= 0.5


def answer_correct(answer: str, reply: str) -> bool:
    from speechllm.text_normalize import normalize

    a, r = normalize(answer).split(), normalize(reply).split()
    return bool(a) and any(r[i : i + len(a)] == a for i in range(len(r) - len(a) + 1))


def eval_subset(rows: Sequence[ManifestRow], max_rows: int, seed: int) -> list[ManifestRow]:
    """At most ``max_rows``: a fixed, seeded subset across the whole file (all tasks), in file order."""
    if len(rows) <= max_rows:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


@torch.no_grad()
def evaluate(model: SpeechLLM, rows: Sequence[ManifestRow], batch_size: int = 8,
             max_new_tokens: int = 128, progress: bool = False) -> dict[str, Any]:
    """Greedy replies to ``rows``; metrics per kind of task, and IFR per task and overall."""
    from tqdm import tqdm

    from speechllm.audio import load_audio
    from speechllm.metrics import char_error_rate, word_error_rate
    from speechllm.metrics_bleu import corpus_bleu

    was_training = model.training
    model.eval()
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    examples = [example_of(r) for r in rows]
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
    metrics: dict[str, Any] = {"rows": len(rows)}
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.task, []).append(i)
    followed = [follows_instruction(e.task, r, e.spoken) for e, r in zip(examples, replies, strict=True)]
    for task, idx in by_task.items():
        refs, hyps = [examples[i].reply for i in idx], [replies[i] for i in idx]
        metrics[f"ifr/{task}"] = float(np.mean([followed[i] for i in idx]))
        if task == "transcribe":
            metrics["wer"] = word_error_rate(refs, hyps).rate
            metrics["cer"] = char_error_rate(refs, hyps).rate
        elif task == "translate":
            metrics["bleu"] = corpus_bleu(refs, hyps).score
        elif task in ("spoken-question", "passage-question"):
            correct = [answer_correct(r, h) for r, h in zip(refs, hyps, strict=True)]
            metrics[f"qa_acc/{task}"] = float(np.mean(correct))
    metrics["ifr"] = float(np.mean(followed)) if followed else 0.0
    metrics["examples"] = [{"task": e.task, "ref": e.reply, "hyp": r}
                           for e, r in list(zip(examples, replies, strict=True))[:5]]
    return metrics


# ---------------------------------------------------------------- checkpoints

CHECKPOINTS, STATE_FILE, OPTIMIZER_FILE = "checkpoints", "trainer_state.json", "optimizer.safetensors"


def save_checkpoint(model: SpeechLLM, optimizer: torch.optim.Optimizer, out: Path, step: int,
                    config: TrainConfig, keep: int = 2) -> Path:
    """A complete checkpoint folder, written under a hidden name, fsynced, renamed into place only
    once whole (and its folder fsynced); then ``out`` is refreshed. Folders under a hidden name
    are unfinished or on their way out: a crash can leave them, the next save deletes them."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    save_speechlm(model, tmp, info={"step": step})
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    atomic_save_tensors(tensors, tmp / OPTIMIZER_FILE)
    atomic_write_text(tmp / STATE_FILE, json.dumps({
        "step": step, "param_groups": state["param_groups"], "config": asdict(config)}, indent=2))
    replace_folder(tmp, final)
    for old in _checkpoint_folders(root)[:-keep]:
        gone = root / f".{old.name}.old"
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(old, gone)  # never a half-deleted folder under a checkpoint's name
        shutil.rmtree(gone, ignore_errors=True)
    save_speechlm(model, out, info={"step": step, "train": config.train})
    return final


def _checkpoint_folders(root: Path) -> list[Path]:
    """``step-N`` folders, oldest first."""
    found = [(int(p.name[5:]), p) for p in root.glob("step-*") if p.name[5:].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, cut short or garbled), or None when
    every file it needs is there and readable; cheap: headers and sizes, no tensor is read."""
    try:
        state = read_json(folder / STATE_FILE)
        if not isinstance(state.get("step"), int) or not isinstance(state.get("param_groups"), list):
            return f"{folder / STATE_FILE}: no step or param_groups"
        check_speechlm_files(folder)
        check_safetensors(folder / OPTIMIZER_FILE)
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror.lower()}" if exc.filename and exc.strerror else str(exc)
    except ValueError as exc:  # a corrupt file, named
        return str(exc)
    return None


def latest_checkpoint(out: Path) -> Path | None:
    """The newest intact checkpoint; each newer, damaged one is skipped with a one-line warning."""
    for folder in reversed(_checkpoint_folders(out / CHECKPOINTS)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        print(f"warning: skipping damaged checkpoint {folder.name}: {problem}", file=sys.stderr)
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, folder: Path) -> int:
    saved = read_json(folder / STATE_FILE)
    tensors = load_tensors(folder / OPTIMIZER_FILE)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return int(saved["step"])


# ---------------------------------------------------------------- the loop


def _distributed() -> tuple[int, int, int]:
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def _unit_simulator(model: SpeechLLM, noise: dict[str, Any] | None):
    from speechllm.speechlm.simulated_units import UnitNoise, UnitSimulator, confusable_units

    if not hasattr(model.adapter, "unit_embeddings"):
        raise ValueError(f"text-side training needs the ctc-posterior adapter, not {model.config.adapter!r}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in (noise or {}).items()}
    spec = UnitNoise(**options)
    return UnitSimulator(model.ctc_vocab, confusable_units(model.adapter, spec.neighbours), spec)


def _text_loss(model: SpeechLLM, simulator, examples: list[Example], seed: list[int]):
    """The LLM loss of text examples whose audio is simulated CTC units (seeded per item)."""
    from speechllm.speechlm.simulated_units import simulated_output

    units = [simulator(e.spoken, np.random.default_rng([*seed, j])) for j, e in enumerate(examples)]
    return model.forward_units(simulated_output(model.adapter, units), [e.instruction for e in examples],
                               [e.reply for e in examples])


def lr_at(step: int, config: TrainConfig) -> float:
    return warmup_cosine(step, config.lr, min(config.warmup, max(config.steps // 10, 1)), config.steps)


def train(config: TrainConfig, model: SpeechLLM | None = None) -> TrainResult:
    """Run (or resume) training; ``model`` may be passed in already built (tests, notebooks)."""
    rank, world, local_rank = _distributed()
    out = Path(config.out)
    # 1. every bad row, before anything heavy
    if not config.train and config.text_share < 1:
        raise ValueError("a training manifest is needed unless every batch is text (text_share 1)")
    manifests = ([config.train] if config.train else []) + ([config.eval] if config.eval else [])
    max_seconds = config.max_seconds if config.max_seconds is not None else (
        30.0 if config.encoder_kind == "whisper" else None)
    rows = check_manifests(manifests, max_seconds) if manifests else []
    train_rows = rows.pop(0) if config.train else []
    eval_rows = rows[0] if config.eval else []
    eval_rows = eval_subset(eval_rows, config.eval_max_rows, config.seed)
    mix = TextMix(config.text_share, config.seed)
    if config.text_share > 0 and not config.text_train:
        raise ValueError("text_share > 0 needs text rows (--text-train FILE)")
    text_rows = read_text_rows(config.text_train) if config.text_share > 0 else []
    if text_rows and world > 1:
        raise ValueError("text-side training runs in one process (no DDP)")
    # 2. model, optimizer, where to start
    device = _device(config, local_rank)
    started_group = world > 1 and not torch.distributed.is_initialized()
    if started_group:  # the backend follows the training device: --device cpu on a GPU host needs gloo
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    checkpoint = latest_checkpoint(out) if config.resume else None
    if config.resume and checkpoint is None and rank == 0:
        print(f"no checkpoint in {out / CHECKPOINTS}: starting from step 0", file=sys.stderr)
    torch.manual_seed(config.seed)
    built_here = False
    if checkpoint is not None:
        model = load_speechlm(checkpoint)
    elif model is None:
        built_here = True
        model = SpeechLLM.build(config.model_config())
        spoken = [t for r in [*train_rows, *text_rows] if (t := example_of(r).spoken)]
        model.adapter.fit_vocabulary(model.tokenizer, spoken)
    model = model.to(device).train()
    if config.freeze_adapter:
        if not model.has_lora or config.lm_weight == 0:
            raise ValueError("a frozen adapter leaves only LoRA to train: give LoRA (--lora-rank) and the "
                             "LLM's loss (--lm-weight > 0)")
        if built_here:
            raise ValueError("--freeze-adapter keeps a trained adapter as it is: start from one (--base)")
        model.adapter.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = load_optimizer_state(optimizer, checkpoint) if checkpoint is not None else 0
    net: Any = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    order = BatchOrder(max(len(train_rows), 1), config.batch_size, config.seed,
                       mix.speech_before(start * config.grad_accum), rank, world)
    text_order = BatchOrder(max(len(text_rows), 1), config.batch_size, config.seed + 1)
    simulator = _unit_simulator(model, config.text_noise) if text_rows else None
    if config.encoder_cache and config.augment is not None:
        raise ValueError("--encoder-cache and --augment exclude each other (augmented audio differs)")
    # keyed by the encoder of the model being trained (a checkpoint's or a base's), never the config's
    # default: another encoder's features under this one's key would poison the cache
    cache = EncoderCache(config.encoder_cache, model.config.encoder, model.encoder.trainable_layers) \
        if config.encoder_cache else None
    dataset = SpeechDataset(train_rows, augment_config(config.augment), config.seed)
    loader = iter(DataLoader(dataset, batch_sampler=order, collate_fn=collate,
                             num_workers=config.num_workers, persistent_workers=config.num_workers > 0))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        n_train = sum(p.numel() for p in params)
        print(f"{len(train_rows)} training rows, {len(eval_rows)} eval rows; {n_train / 1e6:.2f} M trainable "
              f"parameters; steps {start}..{config.steps}", file=sys.stderr)
    # 3. steps
    from tqdm import tqdm

    save_every = config.save_every or config.eval_every
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress or rank != 0, file=sys.stderr,
               unit="step", dynamic_ncols=True)
    log = open(out / "train_log.jsonl", "a", encoding="utf-8") if rank == 0 else None
    t0, seen_utts, seen_audio = time.perf_counter(), 0, 0.0
    try:
        for step in range(start, config.steps):
            total = lm = ctc = 0.0
            for k in range(config.grad_accum):
                m = step * config.grad_accum + k
                if mix.is_text(m):  # simulated units stand in for the audio (text-side training)
                    examples = [example_of(text_rows[i]) for i in text_order.batch(m)]
                    result = _text_loss(model, simulator, examples, [config.seed, m])
                    (result.loss / config.grad_accum).backward()
                else:
                    batch = next(loader)
                    examples = batch["examples"]
                    sync = net.no_sync() if world > 1 and k < config.grad_accum - 1 else nullcontext()
                    frames = (cache.frames(model.encoder, batch["paths"], batch["audio"], batch["lengths"],
                                           model.device)
                              if cache else None)
                    with sync:
                        result = net(batch["audio"], batch["lengths"], [e.instruction for e in examples],
                                     [e.reply for e in examples], [e.spoken for e in examples],
                                     config.ctc_weight, config.lm_weight, frames)
                        (result.loss / config.grad_accum).backward()
                    seen_audio += float(batch["lengths"].sum()) / 16000
                total += float(result.loss.detach()) / config.grad_accum
                lm += float(result.lm_loss) / config.grad_accum
                ctc += float(result.aux_loss or 0.0) / config.grad_accum
                seen_utts += len(examples)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{total:.3f}", ctc=f"{ctc:.3f}", utt_s=f"{seen_utts / elapsed:.1f}",
                            audio_x=f"{seen_audio / elapsed:.1f}")
            bar.update(1)
            done = step + 1
            if log and (done % config.log_every == 0 or done == config.steps):
                log.write(json.dumps({"step": done, "loss": total, "lm_loss": lm, "ctc_loss": ctc,
                                      "lr": lr_at(step, config), "utt_per_s": seen_utts / elapsed}) + "\n")
                log.flush()
            last = done == config.steps
            if eval_rows and (done % config.eval_every == 0 or last):
                if rank == 0:
                    metrics = {"step": done, **evaluate(model, eval_rows, config.eval_batch_size,
                                                        config.max_new_tokens)}
                    evals.append(metrics)
                    log.write(json.dumps({"eval": metrics}) + "\n")
                    log.flush()
                    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
                    bar.write(f"step {done}: {shown}")
                if world > 1:
                    torch.distributed.barrier()
            if done % save_every == 0 or last:
                if rank == 0:
                    save_checkpoint(model, optimizer, out, done, config)
                if world > 1:
                    torch.distributed.barrier()
    finally:
        bar.close()
        if log:
            log.close()
        if started_group:
            torch.distributed.destroy_process_group()
    return TrainResult(out, config.steps, start, tuple(losses), tuple(evals))
