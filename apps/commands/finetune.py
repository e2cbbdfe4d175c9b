"""``speechllm finetune --train TRAIN.jsonl --eval EVAL.jsonl --adapter alignformer --out DIR``.

Trains a speech-LLM (frozen encoder + adapter + frozen LLM, optional LoRA) on mixed-task
manifests and leaves a model folder in DIR that every ``--model`` option accepts. Runs as is
under ``torchrun --nproc_per_node N`` (DDP). See ``speechllm.train`` for the details.
"""

from __future__ import annotations

import argparse
import json
import os

HELP = "train a speech-LLM adapter (+ LoRA) on manifests; the output folder is a model"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, metavar="TRAIN.jsonl", help="training manifest")
    parser.add_argument("--eval", metavar="EVAL.jsonl", help="evaluation manifest (WER/CER, BLEU, IFR, QA)")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder + checkpoints")
    parser.add_argument("--adapter", default="alignformer",
                        help="linear | conv | qformer | window-qformer | ctc | alignformer (default)")
    parser.add_argument("--adapter-options", default="{}", metavar="JSON",
                        help='adapter config fields, e.g. \'{"max_window": 24}\'')
    parser.add_argument("--encoder", default="whisper-tiny.en", help="zoo name or folder")
    parser.add_argument("--encoder-kind", default="whisper", help="whisper | hf (wav2vec2/HuBERT)")
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="zoo name, folder or GGUF file")
    parser.add_argument("--quant", default=None, help="load the LLM through speechllm.llm in this format")
    parser.add_argument("--lora-rank", type=int, default=0, help="0 = no LoRA (default)")
    parser.add_argument("--lora-alpha", type=float, default=None, help="default 2 x rank")
    parser.add_argument("--instruction-first", action="store_true",
                        help="put the instruction before the audio (default: audio first)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps in all")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per micro-batch (per device)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    parser.add_argument("--ctc-weight", type=float, default=1.0, help="weight of a CTC adapter's loss")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--eval-max-rows", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="reply length cap at evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0, help="audio loading processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from speechllm.adapters import adapter_class
    from speechllm.train import TrainConfig, train

    adapter_class(args.adapter)  # an unknown name fails here, listing the known ones
    try:
        adapter_options = json.loads(args.adapter_options)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--adapter-options is not JSON: {exc}") from None
    if not isinstance(adapter_options, dict):
        raise ValueError("--adapter-options must be a JSON object")
    if args.steps < 1 or args.batch_size < 1 or args.grad_accum < 1 or args.eval_every < 1:
        raise ValueError("--steps, --batch-size, --grad-accum and --eval-every must be at least 1")
    config = TrainConfig(
        train=args.train, eval=args.eval, out=args.out, adapter=args.adapter, adapter_options=adapter_options,
        encoder=args.encoder, encoder_kind=args.encoder_kind, llm=args.llm, quant=args.quant,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, audio_first=not args.instruction_first,
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, ctc_weight=args.ctc_weight,
        eval_every=args.eval_every, save_every=args.save_every, eval_max_rows=args.eval_max_rows,
        max_new_tokens=args.max_new_tokens, seed=args.seed, num_workers=args.num_workers, device=args.device,
        resume=args.resume, progress=not args.quiet)
    result = train(config)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return 0
    if result.evals:
        final = {k: round(v, 4) for k, v in result.evals[-1].items() if isinstance(v, float)}
        print(f"final evaluation (step {result.step}): {json.dumps(final)}")
    print(f"model folder: {result.out}")
    return 0
