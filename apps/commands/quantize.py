"""``speechllm quantize --model NAME_OR_DIR --method rtn|awq|quad --bits 4 --calib TEXT --out DIR``.

Loads the LLM in float, quantizes it with the chosen method (calibrating AWQ/QUAD on ``--calib``),
optionally tunes QUAD's full-precision outlier weights, and writes a quantized model folder that
``--llm`` / ``load_llm`` accept. Prints size and perplexity before and after. Perplexity is measured
on ``--eval`` or, without it, on every 10th passage of ``--calib``, which calibration then skips.

``--calib`` / ``--eval``: a manifest (``.jsonl``, the rows' ``text``) or a plain text file (one
passage per line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "quantize an LLM (RTN, AWQ or QUAD; int4/int8 weights, 4/8/16-bit activations) into a model folder"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="zoo name, Hugging Face folder or GGUF file")
    parser.add_argument("--method", default="rtn", help="rtn | awq | quad (default: rtn)")
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8), help="weight bits (default 4)")
    parser.add_argument("--act-bits", type=int, default=16, choices=(4, 8, 16),
                        help="activation bits: 16 = weight-only (default); 8 or 4 simulated (W4A8/W4A4)")
    parser.add_argument("--group", type=int, default=32, help="int4 group size: 32, 64, 128, or -1 per row")
    parser.add_argument("--rank", type=int, default=32, help="QUAD: outlier directions kept in float")
    parser.add_argument("--calib", required=True, metavar="MANIFEST_OR_TEXT", help="calibration text")
    parser.add_argument("--eval", metavar="MANIFEST_OR_TEXT",
                        help="held-out text for perplexity (default: every 10th passage of --calib)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the quantized model folder")
    parser.add_argument("--samples", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--eval-samples", type=int, default=16, help="perplexity windows (default 16)")
    parser.add_argument("--tune-steps", type=int, default=0,
                        help="QUAD: steps of outlier-weight fine-tuning on the calibration text (default 0)")
    parser.add_argument("--tune-lr", type=float, default=1e-4)
    parser.add_argument("--head-bits", type=int, default=8, choices=(0, 4, 8),
                        help="output head and embedding bits (0 keeps them in float; default 8)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def read_texts(path: str | Path) -> list[str]:
    """Passages from a manifest's ``text`` fields or a text file's non-empty lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text or manifest file")
    if path.suffix == ".jsonl":
        from speechllm.manifest import read_manifest

        texts = [r.text for r in read_manifest(path) if r.text and r.text.strip()]
    else:
        try:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not texts:
        raise ValueError(f"{path}: no text in it")
    return texts


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def run(args: argparse.Namespace) -> int:
    import torch

    from speechllm.files import atomic_folder
    from speechllm.llm import load_llm
    from speechllm.quant.calibrate import perplexity
    from speechllm.quant.model import (
        QuantConfig,
        calibration_batches,
        method_names,
        quantize,
        save_quantized,
        weight_bytes,
    )
    from speechllm.zoo import resolve

    if args.method not in method_names():
        raise ValueError(f"--method must be one of {', '.join(method_names())}, not {args.method!r}")
    if args.group not in (-1, 32, 64, 128):
        raise ValueError(f"--group must be 32, 64, 128 or -1, not {args.group}")
    if args.act_bits < 16 and args.bits != 4:
        raise ValueError("--act-bits below 16 needs --bits 4")
    out = Path(args.out)
    calib_texts = read_texts(args.calib)
    if args.eval:
        eval_texts = read_texts(args.eval)
    else:
        eval_texts = calib_texts[9::10]
        calib_texts = [t for i, t in enumerate(calib_texts) if i % 10 != 9]
        if not eval_texts:
            raise ValueError(f"{args.calib}: too few passages to hold 1 in 10 out; give --eval")

    model, tokenizer = load_llm(args.model, quant="none", prepare=False)
    source = resolve(args.model)
    calib = calibration_batches(tokenizer, calib_texts, args.seq_len, args.samples)
    evals = calibration_batches(tokenizer, eval_texts, args.seq_len, args.eval_samples)
    if not calib or not evals:
        raise ValueError(f"not enough text for one {args.seq_len}-token window (calibration: "
                         f"{len(calib)}, evaluation: {len(evals)}); add text or lower --seq-len")
    size_before = weight_bytes(model)
    ppl_before = perplexity(model, evals)
    print(f"float model: {_mb(size_before)} of weights (source on disk: {_mb(source.size_bytes())}), "
          f"perplexity {ppl_before:.3f} on {len(evals)} x {args.seq_len} held-out tokens", flush=True)

    config = QuantConfig(method=args.method, bits=args.bits, group_size=args.group, act_bits=args.act_bits,
                         rank=args.rank, head_bits=args.head_bits, embed_bits=args.head_bits)
    quantize(model, config, calib if args.method != "rtn" else None, progress=not args.quiet)
    if args.tune_steps:
        if args.method != "quad":
            raise ValueError("--tune-steps applies to --method quad (its outlier weights)")
        from speechllm.quant.quad import finetune_outliers

        losses = finetune_outliers(model, calib, steps=args.tune_steps, lr=args.tune_lr,
                                   progress=not args.quiet)
        print(f"outlier tuning: loss {losses[0]:.3f} -> {sum(losses[-5:]) / len(losses[-5:]):.3f}")
    with torch.no_grad():
        ppl_after = perplexity(model, evals)

    with atomic_folder(out) as tmp:  # a killed run leaves the old folder (or none), never half of one
        save_quantized(model, tmp, tokenizer)
    on_disk = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    size_after = weight_bytes(model, include_prepared=False)
    print(f"{config.method} W{config.bits}A{config.act_bits}: {_mb(size_after)} of weights "
          f"({size_after / size_before:.0%} of float; model.safetensors {_mb(on_disk)}), "
          f"perplexity {ppl_after:.3f} ({(ppl_after / ppl_before - 1) * 100:+.1f}%)")
    print(f"model folder: {out}")
    return 0
