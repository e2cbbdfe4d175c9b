"""Fine-tuning front end: your recordings (any importable layout, or a manifest) → an adapted model.

``speechllm finetune --train my_recordings/ --base MODEL --out adapted/`` runs, in order:

1. **import**: a folder of audio + same-named ``.txt`` (or ``--layout librispeech | commonvoice |
   kaldi``) becomes a manifest (``speechllm.data_recipes.importers``); a manifest is taken as is;
2. **validate**: every bad item is listed (``FILE:LINE: reason`` or ``AUDIO: reason``: missing or
   unreadable audio, empty transcripts, clips over the encoder's limit) before anything is loaded;
   ``--skip-bad`` trains without them instead;
3. **split**: without ``--eval``, a seeded ``--eval-fraction`` of the utterances is held out;
4. **evaluate the base model** on the held-out set (WER/CER, IFR);
5. **train**, then **evaluate after** on the same rows. A base that hears through Whisper's decoder
   (``"hearing": "whisper"``, the starter) has that decoder fine-tuned on the transcripts
   (:func:`tune_hearing`, ``speechllm.whisper.finetune``): what it hears with learns the voice, and
   every task that hears audio hears with it; a plain Whisper base likewise (:func:`tune_whisper`). Other
   speech-LLM bases (and ``--train-adapter`` / ``--freeze-adapter``)
   train their adapter and LoRA (``speechllm.train``: progress bar, checkpoints, ``--resume``);
6. leave ``OUT/`` as a model folder, ``OUT/data/`` with the exact manifests used, and
   ``OUT/adaptation.json`` with the metrics before and after.

``--resume`` reuses ``OUT/data/`` and the stored "before" metrics, so an interrupted run redoes only
the training steps it had not finished.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from speechllm.manifest import ManifestError, ManifestRow, read_manifest

MANIFEST_SUFFIXES = (".jsonl", ".json")
DATA_DIR, PREPARED_FILE, REPORT_FILE = "data", "prepared.json", "adaptation.json"


@dataclass(frozen=True)
class DataOptions:
    layout: str | None = None  # an importer name; None: a manifest file, or "folder" for a folder
    eval_fraction: float = 0.1  # held out when no eval set is given (0: none)
    skip_bad: bool = False  # leave bad items out (listed on stderr) instead of stopping
    seed: int = 0
    max_seconds: float | None = 30.0  # longest clip the encoder takes
    progress: bool = True


@dataclass(frozen=True)
class Base:
    """The trained speech-LLM a run starts from, and what the run adds to it."""

    model: str  # folder or zoo name
    lora_rank: int = 0  # > 0: a fresh LoRA of this rank on a base without one
    encoder_layers: int = 0  # > 0: fine-tune this many top encoder blocks of a base with a frozen encoder
    train_adapter: bool = False  # a Whisper-hearing base: train its adapter and hear through it instead


HEARING_DECODER = "hearing_decoder.safetensors"  # a tuned Whisper-hearing model's decoder, in OUT/


@dataclass(frozen=True)
class PreparedData:
    train: str  # manifest paths handed to the trainer
    eval: str | None
    notes: tuple[str, ...] = ()  # what was done, for the user


def is_manifest(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in MANIFEST_SUFFIXES


def read_source(src: str | Path, options: DataOptions) -> tuple[list[ManifestRow], list[str]]:
    """Rows of a manifest or of an importable corpus, and every problem (FILE:LINE or AUDIO: reason)."""
    from speechllm.speechlm.tasks import row_tasks
    from speechllm.train import check_manifests

    if is_manifest(src) and options.layout in (None, "manifest"):
        try:
            return check_manifests([src], options.max_seconds)[0], []
        except ManifestError as exc:
            if not options.skip_bad:
                raise
            from speechllm.manifest import validate_manifest

            rows, _ = validate_manifest(src, check_audio=True)
            return [r for r in rows if not _too_long(r, options) and r.task in row_tasks()], exc.errors
    from speechllm.data_recipes.importers import ImportOptions, import_corpus

    layout = options.layout or "folder"
    result = import_corpus(layout, src, ImportOptions(task="asr", progress=options.progress))
    problems = list(result.problems)
    rows = []
    for row in result.rows:
        if _too_long(row, options):
            problems.append(f"{row.audio}: {row.duration:.1f} s is over the encoder's "
                            f"{options.max_seconds:g} s (cut it into shorter clips)")
        else:
            rows.append(row)
    return rows, problems


def _too_long(row: ManifestRow, options: DataOptions) -> bool:
    return options.max_seconds is not None and row.duration is not None and row.duration > options.max_seconds


def split_eval(rows: list[ManifestRow], fraction: float,
               seed: int) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """(train, eval): a seeded ``fraction`` of the rows (at least one) held out, both in input order."""
    if not 0 < fraction < 1:
        raise ValueError(f"--eval-fraction {fraction:g}: must be between 0 and 1")
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} usable utterance(s): need at least 2 to hold some out "
                         "(or pass --eval)")
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    held = set(random.Random(seed).sample(range(len(rows)), n_eval))
    return ([r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held])


def prepare_data(train: str, eval: str | None, out: Path, options: DataOptions,
                 resume: bool = False) -> PreparedData:
    """Import, validate and split as needed; writes ``OUT/data/{train,eval}.jsonl`` when anything changed."""
    from speechllm.manifest import summarize, write_manifest
    from speechllm.speechlm.io import atomic_write_text
    from speechllm.train import latest_checkpoint

    data = out / DATA_DIR
    if resume and (data / PREPARED_FILE).is_file():
        saved = json.loads((data / PREPARED_FILE).read_text(encoding="utf-8"))
        return PreparedData(saved["train"], saved["eval"], (f"reusing the data prepared in {data}",))
    manifests = is_manifest(train) and (eval is None or is_manifest(eval))
    as_given = manifests and options.layout in (None, "manifest")
    if as_given and (eval is not None or options.eval_fraction == 0 or (resume and latest_checkpoint(out))):
        return PreparedData(train, eval)  # manifests as they are: the trainer validates them
    train_rows, problems = read_source(train, options)
    eval_rows = None
    if eval is not None:
        eval_rows, eval_problems = read_source(eval, options)
        problems += eval_problems
    if problems:
        if not options.skip_bad:
            raise ManifestError(train if eval is None else f"{train} and {eval}",
                                problems + ["(fix these, or pass --skip-bad to train without them)"])
        for line in problems:
            print(f"skipped: {line}", file=sys.stderr)
    if not train_rows:
        raise ValueError(f"{train}: no usable utterances")
    notes = []
    if eval_rows is None and options.eval_fraction > 0:
        train_rows, eval_rows = split_eval(train_rows, options.eval_fraction, options.seed)
        total = len(train_rows) + len(eval_rows)
        notes.append(f"held out {len(eval_rows)} of {total} utterances for evaluation")
    train_path = data / "train.jsonl"
    write_manifest(train_path, train_rows)
    eval_path = None
    if eval_rows is not None:
        eval_path = data / "eval.jsonl"
        write_manifest(eval_path, eval_rows)
    notes.append(f"training data {train_path}: {summarize(train_rows).describe()}")
    if problems:
        notes.append(f"{len(problems)} bad item(s) left out")
    prepared = PreparedData(str(train_path), str(eval_path) if eval_path else None, tuple(notes))
    atomic_write_text(data / PREPARED_FILE, json.dumps({"train": prepared.train, "eval": prepared.eval,
                                                        "sources": {"train": str(train), "eval": eval}},
                                                       indent=2) + "\n")
    return prepared


def load_base(base: str, lora_rank: int = 0, encoder_layers: int = 0, adapter_trains: bool = True):
    """(model, its config) from a speech-LLM folder or zoo name; ``lora_rank`` > 0 adds a fresh LoRA
    to a base that has none (its adapter weights are kept); ``encoder_layers`` > 0 fine-tunes that
    many top encoder blocks of a base whose encoder is frozen. A base that hears through Whisper's
    decoder (``"hearing": "whisper"``) whose adapter trains is evaluated and saved hearing through
    its adapter, the part that learns (with a notice); with ``--freeze-adapter`` it keeps Whisper."""
    model, config = _load_base(base, lora_rank)
    if adapter_trains and config.hearing == "whisper":
        print(f"--base {base} hears through Whisper's decoder; fine-tuning trains its adapter, so the "
              "model is evaluated and saved hearing through the adapter (\"hearing\": \"adapter\"; "
              "--freeze-adapter keeps Whisper's hearing)", file=sys.stderr)
        config = model.hear_through_adapter().config
    trained = config.encoder_trainable_layers
    if encoder_layers and trained and encoder_layers != trained:
        raise ValueError(f"--base {base} fine-tunes {trained} encoder layers, which train as they are; "
                         "leave out --train-encoder-layers")
    if encoder_layers and not trained:
        model.train_encoder_layers(encoder_layers)
    return model, model.config


def answer_spoken_questions_with_lora(model, train_manifest: str, text_rows: str | None = None) -> bool:
    """A base that types spoken questions to its LLM without the LoRA (``"spoken_questions": "text"``)
    answers them with its LoRA once it trains on spoken questions (audio rows or ``--text-train`` rows),
    so that training counts (with a notice); True when it changed."""
    from speechllm.speechlm import TASKS
    from speechllm.train_data import read_text_rows

    task = TASKS["spoken-question"]
    if model.config.spoken_questions != "text":
        return False
    rows = [*(read_manifest(train_manifest) if train_manifest else ()),
            *(read_text_rows(text_rows) if text_rows else ())]
    if not any(row.task in task.rows and task.accepts(row) for row in rows):
        return False
    print("the training data has spoken questions: the tuned model answers them with its LoRA "
          "(\"spoken_questions\": \"lora\"; the base typed them to its LLM without it)", file=sys.stderr)
    model.config = replace(model.config, spoken_questions="lora")
    return True


def _load_base(base: str, lora_rank: int):
    from speechllm.speechlm import LoraSpec, SpeechLLM, is_speechlm_folder, load_speechlm, read_config
    from speechllm.speechlm.io import load_speech_side
    from speechllm.zoo import resolve

    folder = resolve(base).path
    if not is_speechlm_folder(folder):
        raise ValueError(f"--base {base}: not a speech-LLM model folder "
                         "(no config.json of format 'speechllm')")
    config, _ = read_config(folder)
    if lora_rank <= 0:
        return load_speechlm(folder), config
    if config.lora is not None:
        raise ValueError(f"--base {base} already has LoRA (rank {config.lora.rank}), which is trained as is; "
                         "leave out --lora-rank")
    config = replace(config, lora=LoraSpec(rank=lora_rank, alpha=2.0 * lora_rank))
    model = SpeechLLM.build(config)
    load_speech_side(model, folder)
    return model.eval(), config


def _metrics_line(metrics: dict[str, Any]) -> str:
    parts = [f"{k.upper()} {100 * metrics[k]:.1f}%" for k in ("wer", "cer") if k in metrics]
    if "wer_fallback" in metrics:
        parts.append(f"with temperature fallback WER {100 * metrics['wer_fallback']:.1f}%")
    if "ifr" in metrics:
        parts.append(f"IFR {100 * metrics['ifr']:.0f}%")
    if "bleu" in metrics:
        parts.append(f"BLEU {metrics['bleu']:.2f} (sacrebleu {metrics.get('bleu_signature', '?')})")
    return ", ".join(parts) or json.dumps({k: v for k, v in metrics.items() if isinstance(v, float)})


def is_whisper_base(name: str) -> bool:
    """Whether ``name`` (zoo name, folder or Hugging Face id) is a plain Whisper model folder."""
    from speechllm.speechlm import is_speechlm_folder
    from speechllm.whisper.weights import detect_format
    from speechllm.zoo import resolve

    try:
        folder = resolve(name).path
        if is_speechlm_folder(folder):
            return False
        detect_format(folder)
    except (OSError, ValueError):  # not there, or not Whisper: check_model names the problem
        return False
    return True


def tunes_hearing(config, base: Base | None) -> bool:
    """Whether a run fine-tunes the base's hearing Whisper decoder (:func:`tune_hearing`): a base that
    hears through Whisper, unless the run asks for its adapter or LoRA to train."""
    from speechllm.speechlm import read_config
    from speechllm.zoo import resolve

    if base is None or base.train_adapter or base.lora_rank or base.encoder_layers:
        return False
    if config.freeze_adapter or config.text_train:
        return False
    return read_config(resolve(base.model).path)[0].hearing == "whisper"


@dataclass
class DecoderTarget:
    """What a decoder-tuning run works on: the Whisper (a :class:`~speechllm.transcriber.WhisperTranscriber`)
    whose decoder trains, how the model around it is evaluated (the task metrics), and how it is saved."""

    asr: Any
    cache_key: str  # the encoder's name, for --encoder-cache
    evaluate: Callable[[list[ManifestRow]], dict[str, Any]]
    save: Callable[[Path, dict[str, Any]], None]  # (OUT, info)


def tune_hearing(config, base: Base, prepared: PreparedData, tuning=None) -> dict[str, Any]:
    """A speech-LLM base (checked by :func:`adapt`) that hears through Whisper: that Whisper's decoder
    fine-tuned on the training rows' transcripts (:func:`tune_decoder_of`); ``OUT/`` hears with it."""
    from speechllm.speechlm.io import save_speechlm
    from speechllm.train import evaluate

    print(f"--base {base.model} hears through Whisper's decoder: fine-tuning it on the transcripts "
          "(--train-adapter trains the adapter instead)", file=sys.stderr)
    model, _ = _load_base(base.model, 0)

    def evaluated(rows: list[ManifestRow]) -> dict[str, Any]:
        model.whisper.forget()  # transcripts heard before this step are stale
        return evaluate(model, rows, config.eval_batch_size, config.max_new_tokens, progress=config.progress)

    def save(out: Path, info: dict[str, Any]) -> None:
        model.config = replace(model.config, hearing_decoder=HEARING_DECODER)
        save_speechlm(model, out, info)

    target = DecoderTarget(model.whisper.asr, model.config.encoder, evaluated, save)
    return tune_decoder_of(target, config, base, prepared, tuning)


def tune_whisper(config, base: Base, prepared: PreparedData, tuning=None) -> dict[str, Any]:
    """A plain Whisper base: its decoder fine-tuned (:func:`tune_decoder_of`); ``OUT/`` is a Whisper model
    folder (``speechllm.whisper.finetune.write_tuned_whisper``) that ``transcribe --model`` takes."""
    from speechllm.speechlm.tasks import error_rates
    from speechllm.transcriber import WhisperTranscriber
    from speechllm.whisper.finetune import write_tuned_whisper

    for flag, given in (("--lora-rank", base.lora_rank), ("--train-encoder-layers", base.encoder_layers),
                        ("--train-adapter", base.train_adapter), ("--freeze-adapter", config.freeze_adapter),
                        ("--text-train", config.text_train)):
        if given:
            raise ValueError(f"{flag}: --base {base.model} is a Whisper model, whose decoder is fine-tuned; "
                             f"{flag} is for speech-LLM bases")
    asr = WhisperTranscriber(base.model, device=config.device if config.device != "auto" else None)
    print(f"--base {base.model} is a Whisper model: fine-tuning its decoder on the transcripts",
          file=sys.stderr)

    fallback = asr.options  # transcribe's default
    greedy = replace(fallback, temperatures=(0.0,))

    def evaluated(rows: list[ManifestRow]) -> dict[str, Any]:
        """Transcripts as ``transcribe`` writes them, and with Whisper's temperature fallback (a Whisper
        tuned on few clips can loop on a hard one, which the fallback decodes again): ``*_fallback``."""
        from tqdm import tqdm

        rows = [r for r in rows if r.task == "asr"]  # what a Whisper does
        metrics: dict[str, Any] = {"rows": len(rows)}
        for suffix, options in (("", greedy), ("_fallback", fallback)):
            asr.options = options
            bar = tqdm(rows, desc="evaluating", unit="utt", disable=not config.progress, file=sys.stderr)
            hyps = [asr.transcribe(r.audio).text.strip() for r in bar]
            metrics.update({k + suffix: v for k, v in error_rates("transcribe", [r.text for r in rows],
                                                                    hyps).items()})
        asr.options = greedy
        return metrics

    def save(out: Path, info: dict[str, Any]) -> None:
        write_tuned_whisper(asr.model, base.model, asr.resolved.path, out, info)

    return tune_decoder_of(DecoderTarget(asr, base.model, evaluated, save), config, base, prepared, tuning)


def tune_decoder_of(target: DecoderTarget, config, base: Base, prepared: PreparedData,
                    tuning=None) -> dict[str, Any]:
    """Evaluate ``target`` on the held-out rows, fine-tune its Whisper's decoder on the training rows'
    transcripts (``tuning``: :class:`speechllm.whisper.finetune.DecoderTuning`), evaluate after, save
    it to ``OUT/``; returns the report also written to ``OUT/adaptation.json``."""
    from speechllm.encoder_cache import EncoderCache
    from speechllm.files import atomic_write_text
    from speechllm.train import eval_subset
    from speechllm.whisper.finetune import Clip, DecoderTuning, tune_decoder

    tuning = tuning or DecoderTuning()
    out = Path(config.out)
    rows = read_manifest(prepared.train)
    clips = [Clip(r.audio, r.text, r.lang) for r in rows if r.task == "asr" and r.text and r.text.strip()]
    if len(clips) < len(rows):
        print(f"{len(rows) - len(clips)} training row(s) of other tasks than transcription are not used: "
              "Whisper's decoder learns from transcripts", file=sys.stderr)
    if not clips:
        raise ValueError(f"{prepared.train}: no transcribed clips to fine-tune Whisper's decoder on")
    report_path = out / REPORT_FILE
    report: dict[str, Any] = {"base": base.model, "train": prepared.train, "eval": prepared.eval,
                              "trains": "whisper decoder"}
    if config.resume and report_path.is_file():
        report = {**json.loads(report_path.read_text(encoding="utf-8")), **report}
    eval_rows = eval_subset(read_manifest(prepared.eval), config.eval_max_rows, config.seed) \
        if prepared.eval else []
    report["eval_rows"] = len(eval_rows)
    if tuning.language is not None:  # a code this Whisper lacks: said before anything runs
        try:
            target.asr.tokenizer.sot_sequence(tuning.language)
        except ValueError as exc:
            raise ValueError(f"--language {tuning.language}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    if eval_rows and "before" not in report:
        print(f"evaluating the base model on {len(eval_rows)} held-out utterances ...", file=sys.stderr)
        report["before"] = _numbers(target.evaluate(eval_rows))
        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
        print(f"before: {_metrics_line(report['before'])}")
    cache = EncoderCache(config.encoder_cache, f"{target.cache_key}|30 s window") \
        if config.encoder_cache else None
    started = time.monotonic()
    result = tune_decoder(target.asr.model, target.asr.tokenizer, clips, out, tuning, resume=config.resume,
                          cache=cache, evaluate=(lambda step: _numbers(target.evaluate(eval_rows)))
                          if eval_rows else None)
    report["train_seconds"] = round(time.monotonic() - started, 1)  # this run's: encoding, steps, evaluations
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    report["languages"] = result.languages  # given by the rows, or detected by a multilingual Whisper
    if set(result.languages) != {"en"}:
        print("clips by language: " + ", ".join(f"{k} {v}" for k, v in sorted(result.languages.items())),
              file=sys.stderr)
    used = len(clips) - len(result.skipped)
    target.save(out, {"base": base.model, "decoder": f"Whisper's decoder fine-tuned {result.step} steps on "
                                                     f"{used} clips of {prepared.train}"})
    report["steps"] = result.step
    if eval_rows:
        done = result.evals[-1] if result.evals and result.evals[-1]["step"] == result.step else None
        report["after"] = {k: v for k, v in done.items() if k != "step"} if done \
            else _numbers(target.evaluate(eval_rows))
        report["evals"] = [{"step": e["step"], **{k: v for k, v in e.items() if k.startswith(("wer", "cer"))}}
                           for e in result.evals]
        _print_after(report, len(eval_rows))
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def _print_after(report: dict[str, Any], rows: int) -> None:
    print(f"after:  {_metrics_line(report['after'])}")
    fallback = "wer_fallback" in report.get("before", {}) and "wer_fallback" in report["after"]
    if "before" in report and "wer" in report["before"] and "wer" in report["after"]:
        before, after = 100 * report["before"]["wer"], 100 * report["after"]["wer"]
        how = " greedy (--temperature 0)" if fallback else ""
        print(f"WER on {rows} held-out utterances{how}: {before:.1f}% (base) -> {after:.1f}% (adapted)")
    if fallback:
        before, after = 100 * report["before"]["wer_fallback"], 100 * report["after"]["wer_fallback"]
        print(f"with temperature fallback (transcribe's default): {before:.1f}% -> {after:.1f}%")


def adapt(config, base: Base | None, prepared: PreparedData, tuning=None) -> dict[str, Any]:
    """Evaluate the base model, train from it (or from scratch without ``base``), evaluate after.

    ``config`` is a :class:`speechllm.train.TrainConfig` naming the prepared manifests (with a
    ``base``, its model is the base's); returns the report also written to ``OUT/adaptation.json``.
    A base that hears through Whisper has its decoder tuned instead (:func:`tune_hearing`, with
    ``tuning``).
    """

    from speechllm.apps.commands.preflight import check_model
    from speechllm.device import pick_device
    from speechllm.speechlm import load_speechlm, read_config
    from speechllm.speechlm.io import atomic_write_text
    from speechllm.train import check_manifests, eval_subset, evaluate, latest_checkpoint, train

    out = Path(config.out)
    if base is not None:  # bad rows before the base model loads (the trainer checks again, durations too)
        check_manifests([m for m in (prepared.train, prepared.eval) if m], None)
        if is_whisper_base(base.model):
            return tune_whisper(config, base, prepared, tuning)
        try:  # damaged or not a speech-LLM: one line
            check_model(base.model, needs_speechlm=True, flag="--base", task="finetune")
        except ValueError as exc:
            raise ValueError(f"{exc}; or a Whisper model (e.g. --base whisper-tiny.en), whose decoder is "
                             "tuned") from None
        if tunes_hearing(config, base):
            return tune_hearing(config, base, prepared, tuning)
    report_path = out / REPORT_FILE
    report: dict[str, Any] = {"base": base and base.model, "train": prepared.train, "eval": prepared.eval}
    if config.resume and report_path.is_file():
        report = {**json.loads(report_path.read_text(encoding="utf-8")), **report}
    eval_rows = eval_subset(read_manifest(prepared.eval), config.eval_max_rows, config.seed) \
        if prepared.eval else []
    report["eval_rows"] = len(eval_rows)
    model = None
    resuming = config.resume and latest_checkpoint(out) is not None
    if base is not None:  # the architecture is the base's (on resume: as its checkpoint saved it)
        if resuming:
            model_config, _ = read_config(latest_checkpoint(out))
        else:
            model, model_config = load_base(base.model, base.lora_rank, base.encoder_layers,
                                            not config.freeze_adapter)
        config = replace(config, model=model_config)
    if base is not None and eval_rows and "before" not in report:
        if model is None:  # resumed after the base evaluation was lost: evaluate the base again
            model, _ = load_base(base.model, base.lora_rank, base.encoder_layers, not config.freeze_adapter)
        print(f"evaluating the base model on {len(eval_rows)} held-out utterances ...", file=sys.stderr)
        device = pick_device(config.device)
        report["before"] = _numbers(evaluate(model.to(device), eval_rows, config.eval_batch_size,
                                             config.max_new_tokens, progress=config.progress))
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
        print(f"before: {_metrics_line(report['before'])}")
    if model is not None and not resuming and answer_spoken_questions_with_lora(
            model, prepared.train, config.text_train):
        config = replace(config, model=model.config)
    result = train(config, model=None if resuming else model)
    if eval_rows:
        after = result.evals[-1] if result.evals and result.evals[-1]["step"] == result.step else None
        if after is None:  # nothing left to train (an earlier run finished): evaluate the model folder
            after = evaluate(load_speechlm(out), eval_rows, config.eval_batch_size, config.max_new_tokens,
                             progress=config.progress)
        report["after"] = _numbers(after)
        report["steps"] = result.step
        _print_after(report, len(eval_rows))
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
