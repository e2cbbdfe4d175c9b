"""``speechllm finetune --train TRAIN --out DIR [--base MODEL] [--eval EVAL]``.

Trains a speech-LLM (frozen encoder + adapter + frozen LLM, optional LoRA) and leaves a model
folder in DIR that every ``--model`` option accepts.

* From scratch: ``--train TRAIN.jsonl --eval EVAL.jsonl --adapter alignformer`` (mixed-task
  manifests). Runs as is under ``torchrun --nproc_per_node N`` (DDP). See ``speechllm.train``.
* Adapting a trained model (a speech-LLM, or a Whisper) to your data: ``--train my_recordings/ --base
  MODEL``: the recordings (audio + same-named .txt, or ``--layout librispeech|commonvoice|kaldi``, or
  a manifest) are imported and validated, an eval set is held out when none is given, the base model
  is evaluated, trained on, and evaluated again; WER before and after is printed. See
  ``speechllm.apps.finetune``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

HELP = ("train a speech-LLM, or adapt one (or a Whisper) to a folder of your recordings (--base); the output "
        "is a model")


def register(parser: argparse.ArgumentParser) -> None:
    from speechllm.data_recipes.importers import IMPORTERS

    parser.add_argument("--train", metavar="TRAIN",
                        help="training manifest (.jsonl), or a corpus: a folder of audio files with "
                             "same-named .txt transcripts, or any --layout")
    parser.add_argument("--text-train", metavar="TEXT.jsonl",
                        help="text rows (speechllm data text): ctc-posterior learns LLM-side tasks from "
                             "text, with simulated CTC units standing in for the audio")
    parser.add_argument("--text-share", type=float, default=None,
                        help="share of micro-batches from --text-train (default 1 without --train, else 0.5)")
    parser.add_argument("--text-noise", default=None, metavar="JSON",
                        help='how the simulated units err, e.g. \'{"delete": 0.1, "substitute": 0.2}\'')
    parser.add_argument("--eval", metavar="EVAL",
                        help="evaluation manifest or corpus (WER/CER, BLEU, IFR, QA); default: hold out "
                             "--eval-fraction of TRAIN")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder + checkpoints")
    parser.add_argument("--layout", choices=["manifest", *IMPORTERS], default=None,
                        help="how TRAIN/EVAL are laid out (default: manifest for a .jsonl file, folder for a "
                             "folder)")
    parser.add_argument("--base", metavar="MODEL",
                        help="start from this trained speech-LLM (folder or zoo name): its encoder, adapter, "
                             "LLM and LoRA, or the Whisper decoder it hears with; or from a Whisper model "
                             "(e.g. whisper-tiny.en), whose decoder is tuned; evaluated before and after")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="share of TRAIN held out for evaluation when no --eval is given (0: none)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="train without bad items (listed on stderr) instead of stopping at them")
    parser.add_argument("--adapter", default=None,
                        help="linear | conv | qformer | window-qformer | ctc | alignformer (default)")
    parser.add_argument("--adapter-options", default=None, metavar="JSON",
                        help='adapter config fields, e.g. \'{"max_window": 24}\'')
    parser.add_argument("--encoder", default=None, help="zoo name or folder (default whisper-tiny.en)")
    parser.add_argument("--encoder-kind", default=None, help="whisper (default) | hf (wav2vec2/HuBERT)")
    parser.add_argument("--llm", default=None,
                        help="zoo name, folder or GGUF file (default smollm2-135m-instruct)")
    parser.add_argument("--quant", default=None, help="load the LLM through speechllm.llm in this format")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="0 = no LoRA (default); with --base: add LoRA of this rank to a base without")
    parser.add_argument("--lora-alpha", type=float, default=None, help="default 2 x rank")
    parser.add_argument("--train-encoder-layers", type=int, default=0, metavar="N",
                        help="fine-tune the encoder's top N blocks with the adapter (default 0: frozen "
                             "encoder); with --base: a base with a frozen encoder starts doing so")
    parser.add_argument("--instruction-first", action="store_true",
                        help="put the instruction before the audio (default: audio first)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps in all (default 1000; tuning Whisper's decoder: about 8 "
                             "passes over the clips)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="utterances per micro-batch, per device (default 8; Whisper's decoder 16)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 5e-4; Whisper's decoder 1e-5)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="AdamW weight decay (default 0.01; Whisper's decoder 0)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 100; Whisper's "
                        "decoder 10)")
    parser.add_argument("--ctc-weight", type=float, default=1.0, help="weight of a CTC adapter's loss")
    parser.add_argument("--augment", nargs="?", const="{}", default=None, metavar="JSON",
                        help="on-the-fly augmentation of training audio (speed, noise, gain, reverb); "
                             "optional JSON of speechllm.augment.AugmentConfig fields, "
                             "e.g. '{\"noise_prob\": 0.8}'")
    parser.add_argument("--encoder-cache", metavar="DIR",
                        help="keep the frozen encoder's outputs here; later epochs (and other adapters on "
                             "the same data) skip the encoder")
    parser.add_argument("--lm-weight", type=float, default=1.0,
                        help="weight of the LLM's loss; 0 trains a ctc-posterior adapter on CTC alone, "
                             "without running the LLM")
    parser.add_argument("--language", default=None, metavar="CODE",
                        help="tuning a Whisper decoder: the recordings' language (e.g. es) where a row names "
                             "none (default: each clip's, detected by a multilingual Whisper)")
    parser.add_argument("--train-adapter", action="store_true",
                        help="with a --base that hears through Whisper's decoder (the starter): train its "
                             "adapter and LoRA, and hear through the adapter, instead of fine-tuning "
                             "Whisper's decoder")
    parser.add_argument("--freeze-adapter", action="store_true",
                        help="train only the LoRA: the base model's adapter, and so its CTC transcript, stay "
                             "as they are (e.g. teaching a --base new tasks)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between evaluations (default 500; Whisper's decoder: at the end)")
    parser.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--eval-max-rows", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="reply length cap at evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0, help="audio loading processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


ARCHITECTURE = ("adapter", "adapter_options", "encoder", "encoder_kind", "llm", "quant")  # flags --base sets


def _json_option(text: str | None, flag: str) -> dict | None:
    """A JSON-object option's value (None stays None), or a one-line error naming the flag."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def model_config(args: argparse.Namespace):
    """The speech-LLM the flags describe (what they leave out: ``SpeechLLMConfig``'s defaults)."""
    from speechllm.adapters import adapter_class
    from speechllm.speechlm import LoraSpec, PromptFormat, SpeechLLMConfig

    chosen = {k: getattr(args, k) for k in ARCHITECTURE if getattr(args, k) is not None}
    chosen["adapter_options"] = _json_option(args.adapter_options, "--adapter-options") or {}
    lora = LoraSpec(rank=args.lora_rank, alpha=args.lora_alpha or 2.0 * args.lora_rank) \
        if args.lora_rank > 0 else None
    config = SpeechLLMConfig(**chosen, encoder_trainable_layers=args.train_encoder_layers, lora=lora,
                             prompt=PromptFormat(audio_first=not args.instruction_first))
    adapter_class(config.adapter)  # an unknown name fails here, listing the known ones
    return config


def text_share(args: argparse.Namespace) -> float:
    """Share of text micro-batches: given, or 1 without --train, else 0.5 (0 without --text-train)."""
    if not args.text_train:
        return 0.0
    share = args.text_share if args.text_share is not None else (0.5 if args.train else 1.0)
    if not 0 <= share <= 1 or (not args.train and share < 1):
        raise ValueError("--text-share must be in [0, 1], and 1 without --train")
    return share


# flags whose default depends on what trains (the adapter trainer's or Whisper's decoder's)
SCHEDULE = ("steps", "batch_size", "lr", "warmup", "eval_every", "weight_decay")


def _given(args: argparse.Namespace, defaults) -> dict:
    """The schedule flags, each as given or else ``defaults``' value (a dataclass instance)."""
    return {k: getattr(defaults, k) if getattr(args, k) is None else getattr(args, k) for k in SCHEDULE}


def train_config(args: argparse.Namespace):
    """The trainer's config: the flags' data (the front end replaces it with what it prepared), the
    model the flags describe (a --base run replaces it with the base's), and how to train."""
    from speechllm.speechlm import SpeechLLMConfig
    from speechllm.train import TrainConfig

    return TrainConfig(
        train=args.train or "", eval=args.eval, out=args.out,
        model=SpeechLLMConfig() if args.base else model_config(args),
        **_given(args, TrainConfig(train="", out="")), grad_accum=args.grad_accum,
        ctc_weight=args.ctc_weight,
        lm_weight=args.lm_weight, freeze_adapter=args.freeze_adapter, text_train=args.text_train,
        text_share=text_share(args), text_noise=_json_option(args.text_noise, "--text-noise"),
        augment=_json_option(args.augment, "--augment"), encoder_cache=args.encoder_cache,
        save_every=args.save_every, eval_max_rows=args.eval_max_rows,
        max_new_tokens=args.max_new_tokens, seed=args.seed, num_workers=args.num_workers, device=args.device,
        resume=args.resume, progress=not args.quiet)


def decoder_tuning(args: argparse.Namespace):
    """How a Whisper-hearing base's decoder is fine-tuned: the flags, or the decoder's own defaults."""
    from speechllm.whisper.finetune import DecoderTuning

    defaults = DecoderTuning()
    return DecoderTuning(**_given(args, defaults), save_every=args.save_every or defaults.save_every,
                         language=args.language, seed=args.seed, progress=not args.quiet)


def check_args(args: argparse.Namespace) -> None:
    """Every flag checked before data is read or a model loaded."""
    from speechllm.apps.commands import preflight

    given = [f"--{k.replace('_', '-')}" for k in ARCHITECTURE if getattr(args, k) is not None]
    if args.base and given:
        raise ValueError(f"{', '.join(given)}: the architecture comes from --base {args.base}")
    if not args.train and not args.text_train:
        raise ValueError("give training data: --train, --text-train, or both")
    if any(v is not None and v < 1 for v in (args.steps, args.batch_size, args.grad_accum, args.eval_every)):
        raise ValueError("--steps, --batch-size, --grad-accum and --eval-every must be at least 1")
    if args.lr is not None and not args.lr > 0:
        raise ValueError("--lr must be above 0")
    if not 0 <= args.eval_fraction < 1:
        raise ValueError("--eval-fraction must be in [0, 1)")
    preflight.check_device(args.device)
    preflight.check_output_dir(args.out, "--out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from speechllm.apps.commands import preflight
    from speechllm.apps.finetune import Base, DataOptions, PreparedData, adapt, prepare_data
    from speechllm.train import train

    check_args(args)
    config = train_config(args)  # bad flag values (JSON, the adapter's name) fail before any data work
    world = int(os.environ.get("WORLD_SIZE", 1))
    data_options = DataOptions(layout=args.layout, eval_fraction=args.eval_fraction, skip_bad=args.skip_bad,
                               seed=args.seed, progress=not args.quiet)
    if not args.train:  # text rows only: nothing to import or split
        prepared = PreparedData("", args.eval)
    else:
        prepared = prepare_data(args.train, args.eval, Path(args.out), data_options, resume=args.resume) \
            if world == 1 else None
    if world > 1 and (args.base or not (args.train or "").endswith(".jsonl")):
        raise ValueError("under torchrun pass prepared manifests and no --base: run the import/adaptation "
                         "front end in one process")
    for note in prepared.notes if prepared else ():
        print(note, file=sys.stderr)
    if prepared is not None:
        config = replace(config, train=prepared.train, eval=prepared.eval)
    base = Base(args.base, args.lora_rank, args.train_encoder_layers, args.train_adapter) \
        if args.base else None
    if prepared is not None and (args.base or prepared.train != args.train):  # the front end's way
        with preflight.quiet_libraries(args.quiet):
            adapt(config, base, prepared, decoder_tuning(args))
        print(f"model folder: {args.out}")
        return 0
    with preflight.quiet_libraries(args.quiet):  # -q: no transformers loading bars either
        result = train(config)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return 0
    if result.evals:
        final = {k: round(v, 4) for k, v in result.evals[-1].items() if isinstance(v, float)}
        print(f"final evaluation (step {result.step}): {json.dumps(final)}")
    print(f"model folder: {result.out}")
    return 0
