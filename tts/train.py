"""Train the TTS stages one at a time, each resumable from its last checkpoint.

    speechllm tts-train cache     --data my-corpus --cache tts-work/cache
    speechllm tts-train tokenizer --cache tts-work/cache --out tts-work/tokenizer
    speechllm tts-train tokens    --cache tts-work/cache --out tts-work/tokenizer
    speechllm tts-train vocoder   --cache tts-work/cache --out tts-work/vocoder
    speechllm tts-train flow      --cache tts-work/cache --out tts-work/flow --tokenizer tts-work/tokenizer
    speechllm tts-train lm        --cache tts-work/cache --out tts-work/lm --tokenizer tts-work/tokenizer
    speechllm tts-train pack      --cache tts-work/cache --out tts-work/pack --max-mb 48
    speechllm tts-train assemble  --cache tts-work/cache --out my-voice --lm tts-work/lm \
        --flow tts-work/flow --vocoder tts-work/vocoder

(``python -m speechllm.tts.train --stage STAGE ...`` takes the same options.) Every folder is
named: nothing defaults to a path. Each training stage writes ``OUT/config.json`` +
``OUT/model.safetensors`` (the stage's model folder) and ``OUT/checkpoints/step-N/`` (weights,
optimizer, step: ``speechllm.checkpoints``) every ``--save-every`` steps; rerun the same command
to go on from the newest intact checkpoint (``--steps`` is the total). Stages come from the
:data:`STAGES` registry; each is a small class that builds its model, its batches and its loss
from :class:`StageOptions`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from speechllm import checkpoints
from speechllm.device import pick_device
from speechllm.files import atomic_save_tensors, atomic_write_text, check_safetensors, load_tensors
from speechllm.schedule import warmup_cosine
from speechllm.tts.data import Corpus, asr_corpus, char_ids, chars_text, load_corpus, save_tokens
from speechllm.tts.synthesize import config_from_dict, is_tts_folder
from speechllm.zoo import DEFAULT_LLM

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OLD_CHECKPOINT = "checkpoint"  # the one checkpoint folder of runs from before OUT/checkpoints/step-N


def pad(seqs: list[Tensor], value: float = 0.0) -> tuple[Tensor, Tensor]:
    """[B, T, ...] padded batch and lengths."""
    lengths = torch.tensor([len(s) for s in seqs])
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value), lengths


def save_stage(model: nn.Module, out: Path, stage: str, config: Any, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(trainable_state(model), out / MODEL_FILE)
    document = {"stage": stage, "config": _json(asdict(config)), "info": info}
    atomic_write_text(out / CONFIG_FILE, json.dumps(document, indent=2) + "\n")


def _json(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def read_stage(folder: str | Path, stage: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; train the '{stage}' stage there first")
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("stage") != stage:
        raise ValueError(f"{path}: holds stage {document.get('stage')!r}, expected {stage!r}")
    return document["config"], load_file(folder / MODEL_FILE)


def stage_model(folder: str | Path, stage: str, model_cls: type, config_cls: type) -> nn.Module:
    """The trained model of a ``stage`` folder: ``model_cls(config)`` with its saved weights."""
    config, state = read_stage(folder, stage)
    model = model_cls(config_from_dict(config_cls, config))
    model.load_state_dict(state)
    return model


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """What a stage saves: its own weights (a frozen shared backbone stays out)."""
    if hasattr(model, "saved_state"):
        return model.saved_state()
    return model.state_dict()


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopOptions:
    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 100
    batch_size: int = 16
    save_every: int = 250
    eval_every: int = 250
    log_every: int = 25
    grad_clip: float = 1.0
    seed: int = 0


def lr_at(step: int, options: LoopOptions) -> float:
    return warmup_cosine(step, options.lr, options.warmup, options.steps, floor=0.05)


def _flag(default: Any = None, help: str = "", **argparse: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse})


@dataclass(frozen=True)
class StageOptions:
    """What the stages and steps read: the folders they work on and each stage's own options; one
    command-line flag each (``flow_options``: ``--flow-options``)."""

    data: str | None = _flag(help="cache: corpus folder (train/dev/test.jsonl)")
    cache: str | None = _flag(help="the feature cache folder (the cache step writes it, the others read it)")
    out: str | None = _flag(help="the stage's output folder")
    device: str = _flag("auto", "cpu, cuda, or auto (cuda when there is one)")
    speakers: str | None = _flag(help="only utterances whose speaker starts with this")
    tokenizer: str | None = _flag(help="flow, lm: the trained tokenizer's folder")
    tokenizer_options: str | None = _flag(
        help='tokenizer: TokenizerConfig fields as JSON, e.g. \'{"recon_weight": 1}\'')
    asr_data: tuple[str, ...] | None = _flag(
        help="tokenizer: ASR manifests to add (frames from --encoder-cache)", nargs="+")
    encoder_cache: str | None = _flag(
        help="tokenizer: speech-LLM encoder cache holding the --asr-data frames")
    flow_encoder: int = _flag(0, "flow: chunk-causal token-encoder layers before the prior μ", type=int)
    flow_options: str | None = _flag(help='flow: FlowConfig fields as JSON, e.g. \'{"conv_kernel": 5}\'')
    acoustic_options: str | None = _flag(
        help='acoustic: AcousticConfig fields as JSON, e.g. \'{"dim": 256}\'')
    ratio: str = _flag("3:9", "lm: text tokens : speech tokens per group")
    backbone: str = _flag(DEFAULT_LLM, "lm: backbone zoo name/path")
    layers: int | None = _flag(help="lm: use the first N backbone layers", type=int)
    lm: str | None = _flag(help="assemble: the trained LM")
    acoustic: str | None = _flag(help="assemble-acoustic: the trained acoustic model (stage or voice "
                                      "folder); vocoder: train on its teacher-timed mels")
    flow: str | None = _flag(help="assemble: the trained flow model")
    vocoder: str | None = _flag(help="assemble, assemble-acoustic: the trained vocoder (stage or voice "
                                     "folder); vocoder: start from it (a fine-tune)")
    max_mb: float | None = _flag(help="pack: size cap in MiB (dev/test first, then whole training parts)",
                                 type=float)

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **f.metadata)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StageOptions:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class Stage:
    """One trainable stage: subclasses fill in the model, a batch and the loss."""

    name = ""
    needs = ("cache", "out")  # StageOptions folders it cannot do without
    config: Any

    def __init__(self, options: StageOptions):
        self.options = options
        self.device = torch.device("cpu")  # where train_stage put the model

    def build(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        raise NotImplementedError

    def device_batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        """``batch`` with its tensors on the model's device."""
        return to_device(self.batch(corpus, index, rng), self.device)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        return {}

    def usable(self, corpus: Corpus) -> list[int]:
        return list(range(len(corpus)))

    def pick(self, corpus: Corpus, usable: list[int], batch_size: int, rng: random.Random) -> list[int]:
        """The utterances of one batch (default: at random)."""
        return rng.sample(usable, min(batch_size, len(usable)))

    def load_data(self) -> tuple[Corpus, Corpus]:
        cache = self.options.cache
        return load_corpus(cache, "train"), load_corpus(cache, "dev")


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def train_stage(stage: Stage, out: Path, options: LoopOptions,
                device: str | torch.device = "cpu") -> dict[str, float]:
    torch.manual_seed(options.seed)
    train, dev = stage.load_data()
    stage.device = torch.device(device)
    model = stage.build().to(stage.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.01, betas=(0.9, 0.98))
    ckpt = resume_checkpoint(out)
    step = 0
    if ckpt is not None:
        missing, unexpected = model.load_state_dict(load_tensors(ckpt / MODEL_FILE), strict=False)
        if unexpected:
            raise ValueError(f"{ckpt}: weights do not fit the model, e.g. {unexpected[0]}")
        step = checkpoints.load_optimizer_state(optimizer, ckpt)
        print(f"{stage.name}: resumed at step {step}", flush=True)
    usable = stage.usable(train)
    if not usable:
        raise ValueError(f"{stage.name}: no usable training utterance in the cache (a pack holds no "
                         "encoder frames or audio: it trains the flow and the LM only)")
    print(f"{stage.name}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable params, "
          f"{len(usable)}/{len(train)} training utterances", flush=True)
    rng = random.Random(options.seed * 1000003 + step)
    metrics: dict[str, float] = {}
    t0, first_step, running = time.time(), step, {}
    model.train()
    while step < options.steps:
        index = stage.pick(train, usable, options.batch_size, rng)
        loss, parts = stage.loss(model, stage.device_batch(train, index, rng))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
        optimizer.step()
        step += 1
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            running[k] = running.get(k, 0.0) + v
        if step % options.log_every == 0:
            text = " ".join(f"{k} {v / options.log_every:.4f}" for k, v in running.items())
            per_step = (time.time() - t0) / (step - first_step)
            print(f"{stage.name} step {step}: {text} ({per_step:.3f} s/step this run)", flush=True)
            running = {}
        if step % options.eval_every == 0 or step == options.steps:
            model.eval()
            metrics = stage.evaluate(model, dev)
            model.train()
            print(f"{stage.name} eval at {step}: {json.dumps(metrics)}", flush=True)
        if step % options.save_every == 0 or step == options.steps:
            checkpoints.save_checkpoint(out, step, optimizer, partial(_write_weights, model))
            save_stage(model, out, stage.name, stage.config,
                       {"step": step, "metrics": metrics, "loop": asdict(options)})
    model.eval()
    return metrics


def _write_weights(model: nn.Module, folder: Path) -> None:
    atomic_save_tensors(trainable_state(model), folder / MODEL_FILE)


def _check_weights(folder: Path) -> None:
    check_safetensors(folder / MODEL_FILE)


def resume_checkpoint(out: Path) -> Path | None:
    """The newest intact checkpoint in ``OUT/checkpoints`` (a damaged newer one is skipped with a
    warning), else the single ``OUT/checkpoint`` folder of a run from before, with a notice."""
    found = checkpoints.latest_checkpoint(out, _check_weights)
    old = out / OLD_CHECKPOINT
    if found is None and checkpoints.checkpoint_problem(old, _check_weights) is None:
        print(f"note: resuming from {old}, an old-style checkpoint folder (new ones go to "
              f"{out / checkpoints.CHECKPOINTS})", file=sys.stderr)
        return old
    return found


# ---------------------------------------------------------------- stages


class TokenizerStage(Stage):
    name = "tokenizer"

    def __init__(self, options: StageOptions):
        super().__init__(options)
        from speechllm.tts.tokenizer import TokenizerConfig

        self.config = config_from_dict(TokenizerConfig, json.loads(options.tokenizer_options or "{}"))

    def load_data(self) -> tuple[Corpus, Corpus]:
        train, dev = super().load_data()
        if self.options.asr_data:
            if not self.options.encoder_cache:
                raise ValueError("--asr-data needs --encoder-cache (filled by speechllm.encoder_cache)")
            train = train + asr_corpus(self.options.asr_data, self.options.encoder_cache)
        return train, dev

    def build(self) -> nn.Module:
        from speechllm.tts.tokenizer import SpeechTokenizer

        return SpeechTokenizer(self.config)

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        enc, lengths = pad([corpus.enc[i] for i in index])
        targets = [torch.tensor(char_ids(corpus.texts[i])) for i in index]
        if not self.config.recon_weight:
            return enc, lengths, targets
        mel, mel_lengths = pad([corpus.mel[i].float() for i in index])  # ASR rows have no mel: length 0
        return enc, lengths, targets, mel, mel_lengths

    def usable(self, corpus: Corpus) -> list[int]:
        return [i for i, t in enumerate(corpus.texts) if char_ids(t) and len(corpus.enc[i])]

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        from speechllm.metrics import char_error_rate
        from speechllm.tts.tokenizer import ctc_greedy

        refs, hyps, counts = [], [], torch.zeros(self.config.n_tokens)
        for b in range(0, len(dev), 16):
            index = list(range(b, min(b + 16, len(dev))))
            enc, lengths = self.device_batch(dev, index, random.Random(0))[:2]
            logp, mask, ids = model(enc, lengths)
            hyps += [chars_text(h) for h in ctc_greedy(logp.cpu(), mask.cpu())]
            refs += [chars_text(char_ids(dev.texts[i])) for i in index]
            counts += torch.bincount(ids[mask].cpu(), minlength=self.config.n_tokens).float()
        p = counts / counts.sum()
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        return {"cer": round(char_error_rate(refs, hyps).rate, 4),
                "codes_used": int((counts > 0).sum()), "code_perplexity": round(math.exp(entropy), 1)}


def _speaker_filter(corpus: Corpus, prefix: str | None) -> Corpus:
    if not prefix:
        return corpus
    keep = [i for i, s in enumerate(corpus.speakers) if s.startswith(prefix)]
    if not keep:
        raise ValueError(f"no utterances with a speaker starting with {prefix!r}")
    return corpus.select(keep)


class VocoderStage(Stage):
    """Mel -> 16 kHz audio. With ``--acoustic``, its inputs are that acoustic model's mels timed by the
    teacher's durations (ground-truth-aligned), so it learns to voice the acoustic model's smoothed mels
    as the teacher's audio; ``--vocoder`` starts from a trained vocoder (a fine-tune)."""

    name = "vocoder"
    crop = 64  # mel frames per training segment (1.28 s)

    def __init__(self, options: StageOptions):
        super().__init__(options)
        from speechllm.tts.vocoder import VocoderConfig

        self.config = VocoderConfig()
        self.dev_targets: list[Tensor] | None = None  # the teacher's dev mels, where the inputs are not

    def build(self) -> nn.Module:
        from speechllm.tts.vocoder import Vocos

        if self.options.vocoder:
            vocoder = load_vocoder(self.options.vocoder)
            self.config = vocoder.config
            return vocoder
        return Vocos(self.config)

    def load_data(self) -> tuple[Corpus, Corpus]:
        train, dev = super().load_data()
        speakers = self.options.speakers
        train, dev = _speaker_filter(train, speakers), _speaker_filter(dev, speakers)
        if not self.options.acoustic:
            return train, dev
        acoustic = load_acoustic(self.options.acoustic)
        if train.durations is None or dev.durations is None:
            raise ValueError(f"{self.options.cache}: no teacher durations for --acoustic; build it with "
                             "'speechllm data distill'")
        started = time.perf_counter()
        self.dev_targets = dev.mel
        train, dev = aligned_mels(acoustic, train), aligned_mels(acoustic, dev)
        print(f"vocoder: {len(train) + len(dev)} teacher-timed mels of {self.options.acoustic} in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        return train, dev

    def usable(self, corpus: Corpus) -> list[int]:
        return [i for i, m in enumerate(corpus.mel) if len(m) >= self.crop and len(corpus.wav[i])]

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        hop, mels, wavs = self.config.hop, [], []
        for i in index:
            start = rng.randrange(0, len(corpus.mel[i]) - self.crop + 1)
            mels.append(corpus.mel[i][start:start + self.crop].float().T)
            wavs.append(corpus.wav[i][start * hop:(start + self.crop) * hop].float() / 32767)
        return torch.stack(mels), torch.stack(wavs)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        from speechllm.tts.vocoder import vocoder_loss

        mel, wav = batch
        return vocoder_loss(model(mel), wav)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        from speechllm.tts.mel import mel_spectrogram

        targets, errors = self.dev_targets or dev.mel, []
        for i in range(min(len(dev), 12)):
            voiced = mel_spectrogram(model(dev.mel[i].float().T[None].to(self.device)).cpu())
            target = targets[i].float().T[None]
            n = min(voiced.shape[-1], target.shape[-1])
            errors.append(float((voiced[..., :n] - target[..., :n]).abs().mean()))
        return {"dev_mel_l1": round(sum(errors) / len(errors), 4)}


@torch.no_grad()
def aligned_mels(acoustic: nn.Module, corpus: Corpus) -> Corpus:
    """``corpus`` with each mel replaced by ``acoustic``'s mel of the same phonemes, timed by the teacher's
    durations: frame for frame the teacher's audio (a frame short or long from rounding is evened out)."""
    mels = []
    for ids, durations, mel in zip(corpus.phonemes, corpus.durations, corpus.mel, strict=True):
        predicted = acoustic.synthesize(ids.long(), durations=durations.float()).T[: len(mel)]
        if len(predicted) < len(mel):
            predicted = torch.cat([predicted, predicted[-1:].expand(len(mel) - len(predicted), -1)])
        mels.append(predicted.to(mel.dtype))
    return replace(corpus, mel=mels)


class FlowStage(Stage):
    name = "flow"
    needs = ("cache", "out", "tokenizer")
    max_frames = 600  # longest training crop (12 s): a 3 s voice prompt + most sentences, as in synthesis

    def load_data(self) -> tuple[Corpus, Corpus]:
        from speechllm.tts.flow import FlowConfig

        train = _speaker_filter(load_corpus(self.options.cache, "train", tokens=True), self.options.speakers)
        dev = _speaker_filter(load_corpus(self.options.cache, "dev", tokens=True), self.options.speakers)
        frames = torch.cat([m.float() for m in train.mel])
        tok_config, _ = read_stage(self.options.tokenizer, "tokenizer")
        n_tokens = math.prod(tok_config["levels"])
        chosen = {"encoder_layers": self.options.flow_encoder,
                  **json.loads(self.options.flow_options or "{}")}
        stats = {"mel_mean": round(float(frames.mean()), 4), "mel_std": round(float(frames.std()), 4)}
        self.config = config_from_dict(FlowConfig, {"n_tokens": n_tokens, **stats, **chosen})
        return train, dev

    def build(self) -> nn.Module:
        from speechllm.tts.flow import FlowMatching

        return FlowMatching(self.config)

    def usable(self, corpus: Corpus) -> list[int]:
        return [i for i, t in enumerate(corpus.tokens) if len(t) >= 8]

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        up = self.config.upsample
        mels, toks, prompts = [], [], []
        for i in index:
            n_tok = min(len(corpus.tokens[i]), len(corpus.mel[i]) // up)
            take = min(n_tok, self.max_frames // up)
            start = rng.randrange(0, n_tok - take + 1)
            toks.append(corpus.tokens[i][start:start + take])
            mels.append(corpus.mel[i][start * up:(start + take) * up].float())
            prompts.append(up * int(take * rng.uniform(0.1, 0.4)) if rng.random() < 0.8 else 0)
        mel, lengths = pad(mels)
        tokens, _ = pad(toks)
        return mel, tokens, lengths, torch.tensor(prompts), rng.choice(self.config.train_chunks)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        torch.manual_seed(0)
        rng = random.Random(0)
        index = self.usable(dev)[:16]
        batch = list(self.device_batch(dev, index, rng))
        full = model.loss(*batch[:4], 0)[1]
        chunked = model.loss(*batch[:4], 12)[1]
        return {"dev_flow_full": round(full["flow"], 4), "dev_flow_chunk12": round(chunked["flow"], 4),
                "dev_prior": round(full["prior"], 4)}


class LMStage(Stage):
    name = "lm"
    needs = ("cache", "out", "tokenizer")

    def load_data(self) -> tuple[Corpus, Corpus]:
        from speechllm.tts.lm import LMConfig

        train = _speaker_filter(load_corpus(self.options.cache, "train", tokens=True), self.options.speakers)
        dev = _speaker_filter(load_corpus(self.options.cache, "dev", tokens=True), self.options.speakers)
        tok_config, _ = read_stage(self.options.tokenizer, "tokenizer")
        n, m = (int(x) for x in self.options.ratio.split(":"))
        layers = self.options.layers or LMConfig.n_layers
        self.config = LMConfig(backbone=self.options.backbone, n_layers=layers,
                               n_speech=math.prod(tok_config["levels"]), text_chunk=n, speech_chunk=m)
        return train, dev

    def build(self) -> nn.Module:
        from speechllm.tts.lm import TextSpeechLM

        self.model = TextSpeechLM.build(self.config)
        return self.model

    def usable(self, corpus: Corpus) -> list[int]:
        return [i for i, t in enumerate(corpus.tokens) if len(t) >= 4 and corpus.texts[i].strip()]

    def pick(self, corpus: Corpus, usable: list[int], batch_size: int, rng: random.Random) -> list[int]:
        """Utterances of similar length (little padding: the backbone's passes are the cost here)."""
        by_length = sorted(usable, key=lambda i: len(corpus.tokens[i]))
        start = rng.randrange(0, max(len(by_length) - batch_size, 0) + 1)
        return by_length[start:start + batch_size]

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random) -> Any:
        from speechllm.text_normalize import spoken_form
        from speechllm.tts.lm import interleave

        seqs, flags = [], []
        for i in index:
            ids, is_speech = interleave(self.model.text_ids(spoken_form(corpus.texts[i])),
                                        corpus.tokens[i].tolist(), self.config)
            seqs.append(torch.tensor(ids))
            flags.append(torch.tensor(is_speech))
        ids, lengths = pad(seqs)
        is_speech, _ = pad(flags)
        return ids, is_speech.bool(), lengths

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        loss, accuracy = model.loss(*batch)
        return loss, {"acc": float(accuracy)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        index = self.usable(dev)[:24]
        losses, accs = [], []
        for b in range(0, len(index), 8):
            loss, acc = model.loss(*self.device_batch(dev, index[b:b + 8], random.Random(0)))
            losses.append(float(loss))
            accs.append(float(acc))
        return {"dev_loss": round(sum(losses) / len(losses), 4), "dev_acc": round(sum(accs) / len(accs), 4)}


class AcousticStage(Stage):
    """Phoneme ids -> durations and mel, from a distilled cache (``speechllm data distill``)."""

    name = "acoustic"
    crop = 256  # mel frames per training crop (5 s); the encoder always sees the whole sentence

    def __init__(self, options: StageOptions):
        super().__init__(options)
        from speechllm.tts.acoustic import AcousticConfig

        self.config = config_from_dict(AcousticConfig, json.loads(options.acoustic_options or "{}"))

    def load_data(self) -> tuple[Corpus, Corpus]:
        train, dev = super().load_data()
        if train.phonemes is None or dev.phonemes is None:
            raise ValueError(f"{self.options.cache}: no phonemes and durations; build it with "
                             "'speechllm data distill'")
        self.train_mel = torch.cat(train.mel[:2000])
        return train, dev

    def build(self) -> nn.Module:
        from speechllm.tts.acoustic import AcousticModel

        model = AcousticModel(self.config)
        model.set_mel_stats(self.train_mel)  # a resumed run's checkpoint brings its own
        return model

    def usable(self, corpus: Corpus) -> list[int]:
        return [i for i, p in enumerate(corpus.phonemes) if len(p) and len(corpus.mel[i])]

    def batch(self, corpus: Corpus, index: list[int], rng: random.Random | None) -> Any:
        ids, durations, frames, mels = [], [], [], []
        for i in index:
            n = len(corpus.mel[i])
            start = rng.randrange(0, n - self.crop + 1) if rng is not None and n > self.crop else 0
            length = n - start if rng is None else min(self.crop, n - start)
            ids.append(corpus.phonemes[i].long())
            durations.append(corpus.durations[i].float())
            frames.append(torch.arange(start, start + length))
            mels.append(corpus.mel[i][start:start + length].float())
        ids, id_lengths = pad(ids)
        durations, _ = pad(durations)
        frames, frame_lengths = pad(frames)
        mels, _ = pad(mels)
        id_mask = torch.arange(ids.shape[1])[None] < id_lengths[:, None]
        frame_mask = torch.arange(frames.shape[1])[None] < frame_lengths[:, None]
        return ids, id_mask, durations, frames, frame_mask, mels

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return model.loss(*batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dev: Corpus) -> dict[str, float]:
        index = self.usable(dev)[:48]
        totals: dict[str, float] = {}
        for b in range(0, len(index), 16):
            _, parts = model.loss(*to_device(self.batch(dev, index[b:b + 16], None), self.device))
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v * len(index[b:b + 16])
        return {f"dev_{k}": round(v / len(index), 4) for k, v in totals.items()}


STAGES: dict[str, Callable[[StageOptions], Stage]] = {
    "acoustic": AcousticStage,
    "lm": LMStage,
    "tokenizer": TokenizerStage,
    "vocoder": VocoderStage,
    "flow": FlowStage,
}


# ---------------------------------------------------------------- non-training steps


def run_cache(options: StageOptions) -> None:
    from speechllm.tts.data import build_cache

    for split in ("dev", "test", "train"):
        manifest = Path(options.data) / f"{split}.jsonl"
        if manifest.is_file():
            n = build_cache(manifest, options.cache, split, device=pick_device(options.device))
            print(f"{split}: {n} utterances cached in {options.cache}", flush=True)


@torch.no_grad()
def run_tokens(options: StageOptions) -> None:
    """Tokenize every cached split with the trained tokenizer in ``--out``."""
    from speechllm.tts.tokenizer import SpeechTokenizer, TokenizerConfig

    model = stage_model(options.out, "tokenizer", SpeechTokenizer, TokenizerConfig)
    device = pick_device(options.device)
    model.to(device).eval()
    for split in ("train", "dev", "test"):
        try:
            corpus = load_corpus(options.cache, split)
        except FileNotFoundError:
            continue
        tokens = []
        for enc in corpus.enc:
            ids, _ = model.tokenize(enc[None].float().to(device), torch.tensor([len(enc)], device=device))
            tokens.append(ids[0].cpu())
        save_tokens(options.cache, split, corpus.ids, tokens)
        print(f"tokens-{split}: {len(tokens)} utterances, {sum(len(t) for t in tokens)} tokens", flush=True)


def run_pack(options: StageOptions) -> None:
    """``--cache`` → ``--out``: the flow and LM stages' data in 8 bits, at most ``--max-mb``."""
    from speechllm.tts.data import pack_cache

    counts = pack_cache(options.cache, options.out, options.max_mb)
    size = sum(p.stat().st_size for p in Path(options.out).glob("*.safetensors")) / 2**20
    print(f"pack {options.out}: {json.dumps(counts)} utterances, {size:.1f} MB", flush=True)


def load_vocoder(folder: str) -> nn.Module:
    """The trained vocoder of a ``vocoder`` stage folder or of an acoustic voice folder."""
    from speechllm.tts.vocoder import VocoderConfig, Vocos

    if is_tts_folder(folder):
        return _acoustic_voice(folder).vocoder
    return stage_model(folder, "vocoder", Vocos, VocoderConfig)


def load_acoustic(folder: str) -> nn.Module:
    """The trained acoustic model of an ``acoustic`` stage folder or of an acoustic voice folder."""
    from speechllm.tts.acoustic import AcousticConfig, AcousticModel

    if is_tts_folder(folder):
        return _acoustic_voice(folder).model
    return stage_model(folder, "acoustic", AcousticModel, AcousticConfig).eval()


def trained_step(folder: str, stage: str) -> int | None:
    """The training step a stage folder's weights are from (a voice folder records its stages')."""
    info = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8")).get("info", {})
    return info["step"] if "step" in info else info.get("steps", {}).get(stage)


def _acoustic_voice(folder: str) -> Any:
    from speechllm.tts.synthesize import AcousticTTS, load_tts_folder

    voice = load_tts_folder(folder)
    if not isinstance(voice, AcousticTTS):
        raise ValueError(f"{folder}: a TTS folder of another kind, not an acoustic voice")
    return voice


def run_assemble(options: StageOptions) -> None:
    """Trained stages → one TTS model folder in ``--out``, with a speaker prompt from the cache."""
    from speechllm.tts.flow import FlowConfig, FlowMatching
    from speechllm.tts.lm import LMConfig, TextSpeechLM
    from speechllm.tts.synthesize import save_tts

    lm_config, lm_state = read_stage(options.lm, "lm")
    lm = TextSpeechLM.build(config_from_dict(LMConfig, lm_config))
    lm.load_saved_state(lm_state)
    flow = stage_model(options.flow, "flow", FlowMatching, FlowConfig)
    vocoder = load_vocoder(options.vocoder)
    train = load_corpus(options.cache, "train", tokens=True)
    prefix = options.speakers or "piper"
    candidates = [i for i, s in enumerate(train.speakers) if s.startswith(prefix)]
    if not candidates:
        raise ValueError(f"{options.cache}: no training utterance of a speaker starting with {prefix!r} "
                         "to take the voice prompt from")
    pick = min(candidates, key=lambda i: abs(len(train.tokens[i]) - 75))  # about 3 s
    tokens = train.tokens[pick]
    mel = train.mel[pick][: 2 * len(tokens)].float().T
    info = {"prompt": {"id": train.ids[pick], "text": train.texts[pick]},
            "stages": {k: str(getattr(options, k)) for k in ("tokenizer", "flow", "vocoder", "lm")}}
    save_tts(options.out, lm, flow, vocoder, mel, tokens[: mel.shape[1] // 2], info=info)
    print(f"TTS model folder written to {options.out}", flush=True)


def run_assemble_acoustic(options: StageOptions) -> None:
    """A trained acoustic model + vocoder → one TTS model folder in ``--out``, speaking with the
    frontend (espeak-ng voice, phoneme ids) of the teacher that the cache's distillation used."""
    from speechllm.tts.piper import PiperVoice
    from speechllm.tts.synthesize import save_acoustic_tts

    model = load_acoustic(options.acoustic)
    vocoder = load_vocoder(options.vocoder)
    distilled = json.loads((Path(options.cache) / "distill.json").read_text(encoding="utf-8"))
    teacher = PiperVoice.load(distilled["teacher"]).config
    frontend = {"espeak_voice": teacher.espeak_voice, "phoneme_id_map": teacher.phoneme_id_map}
    info = {"teacher": distilled, "stages": {k: str(getattr(options, k)) for k in ("acoustic", "vocoder")},
            "steps": {k: trained_step(getattr(options, k), k) for k in ("acoustic", "vocoder")}}
    save_acoustic_tts(options.out, model, vocoder, frontend, info=info)
    print(f"TTS model folder written to {options.out}", flush=True)


@dataclass(frozen=True)
class Step:
    run: Callable[[StageOptions], None]
    needs: tuple[str, ...]  # StageOptions folders it cannot do without


STEPS: dict[str, Step] = {
    "assemble": Step(run_assemble, ("cache", "out", "lm", "flow", "vocoder")),
    "assemble-acoustic": Step(run_assemble_acoustic, ("cache", "out", "acoustic", "vocoder")),
    "cache": Step(run_cache, ("data", "cache")),
    "pack": Step(run_pack, ("cache", "out")),
    "tokens": Step(run_tokens, ("cache", "out")),
}

STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tokenizer": {"steps": 1500, "lr": 1e-3, "batch_size": 16},
    "acoustic": {"steps": 20000, "lr": 1e-3, "batch_size": 16, "save_every": 250, "eval_every": 500},
    "vocoder": {"steps": 4000, "lr": 1e-3, "batch_size": 8, "save_every": 200, "eval_every": 500},
    "lm": {"steps": 600, "lr": 1e-3, "batch_size": 8, "save_every": 50, "eval_every": 100, "warmup": 30},
    "flow": {"steps": 3000, "lr": 5e-4, "batch_size": 8, "save_every": 200, "eval_every": 500},
}


# ---------------------------------------------------------------- running a stage or step


def check_needs(stage: str, options: StageOptions) -> None:
    """A one-line error naming every folder ``stage`` needs and was not given."""
    needs = STEPS[stage].needs if stage in STEPS else STAGES[stage].needs
    missing = [f"--{name.replace('_', '-')}" for name in needs if getattr(options, name) is None]
    if missing:
        raise ValueError(f"the {stage!r} stage needs {' and '.join(missing)}")


def loop_options(stage: str, given: dict[str, Any]) -> LoopOptions:
    """The loop's options: those ``given`` (not None), else the stage's defaults, else LoopOptions'."""
    chosen = {**STAGE_DEFAULTS.get(stage, {}), **{k: v for k, v in given.items() if v is not None}}
    return LoopOptions(**{f.name: chosen.get(f.name, f.default) for f in fields(LoopOptions)})


def run_stage(stage: str, options: StageOptions, loop: LoopOptions | None = None) -> dict[str, float]:
    """Run one step (cache, tokens, pack, assemble) or train one stage; a stage's last metrics."""
    check_needs(stage, options)
    if stage in STEPS:
        STEPS[stage].run(options)
        return {}
    return train_stage(STAGES[stage](options), Path(options.out), loop or loop_options(stage, {}),
                       pick_device(options.device))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option but the stage itself (``speechllm tts-train`` and ``python -m`` share them)."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    for f in fields(LoopOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            help=f"training stages (default: the stage's own, else {f.default})")
    StageOptions.register(parser)


def run_args(args: argparse.Namespace) -> int:
    """Run ``args.stage`` as the command line asked; a training stage prints its final metrics."""
    torch.set_num_threads(args.threads)
    options = StageOptions.from_args(args)
    loop = loop_options(args.stage, {f.name: getattr(args, f.name) for f in fields(LoopOptions)})
    metrics = run_stage(args.stage, options, loop)
    if args.stage in STAGES:
        print(json.dumps({"stage": args.stage, "out": options.out, **metrics}), flush=True)
    return 0


def build_parser(prog: str = "python -m speechllm.tts.train",
                 stage_flag: bool = True) -> argparse.ArgumentParser:
    """The options of every stage; the stage as ``--stage STAGE`` (``python -m``) or a positional
    ``STAGE`` (``speechllm tts-train``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if stage_flag:
        parser.add_argument("--stage", required=True, choices=[*STEPS, *STAGES])
    else:
        parser.add_argument("stage", choices=[*STEPS, *STAGES])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_needs(args.stage, StageOptions.from_args(args))
    except ValueError as exc:
        parser.error(str(exc))
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
