"""Low-bit core measurements: kernel times per backend, and perplexity per quantization method.

    .venv/bin/python benchmarks/quant.py kernels [--threads 1] [--compile] [--device cuda]
    .venv/bin/python benchmarks/quant.py quality [--threads 2] [--results runs/quant_quality.json]

``kernels``: ``x @ W.T`` for x ``[M, K]`` (``--rows``, default 1: decode, and 256: prefill), for
SmolLM2-135M's projections and a 1B-class MLP (2048x5632 both ways), through every registered backend
that takes the format, against fp32 ``F.linear`` on the same weight in the same run. Each time is the best of
``--repeats`` calls after warm-up: other jobs sharing the CPU only ever slow a call down. A weight
timed in a loop sits in cache, which a real model's weights do not: end-to-end tokens/s
(benchmarks/decode.py) is the figure that counts. ``auto`` is what the measured choice picks.

``quality``: perplexity of SmolLM2-135M-Instruct (the zoo's GGUF; "fp32" is its Q4_1 weights
dequantized, the only float weights there are) on held-out English text, for RTN / AWQ / QUAD at
W4A16, W4A8 and W4A4, QUAD W4A4 after tuning its full-precision outlier weights, and RTN through
``int4-rows`` (activations as int8 blocks of 32, what a GGUF import runs on). Calibration
text is the train split of the project's text pools (Bible verses and fortunes, data_recipes), the
evaluation text their test split: different texts, split by hash. Results are kept in ``--results``
as they come, so a stopped run continues where it was.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SMOLLM2 = {"q/o 576x576": (576, 576), "k/v 192x576": (192, 576), "gate/up 1536x576": (1536, 576),
           "down 576x1536": (576, 1536), "head 49152x576": (49152, 576)}
ONE_B = {"1B up 5632x2048": (5632, 2048), "1B down 2048x5632": (2048, 5632)}


# --- kernels ---------------------------------------------------------------------------------------

def _best(fn, repeats: int, sync=lambda: None) -> float:
    with torch.no_grad():
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return min(times)


def kernels(args: argparse.Namespace) -> None:
    from speechllm.quant import BACKENDS, QuantSpec, quantize_weight
    from speechllm.quant.backends import candidates, choose

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    formats = [QuantSpec(8, -1), QuantSpec(4, 32)]
    names = [n for n in BACKENDS if n != "compile" or args.compile]
    shapes = {label: shape for label, shape in {**SMOLLM2, **ONE_B}.items()
              if not args.shapes or label.split()[0] in args.shapes}
    columns = [(spec, n) for spec in formats for n in names
               if any(BACKENDS[n].supports(spec, *shape, device) for shape in shapes.values())]
    head = " | ".join(f"{spec.name} {n}" for spec, n in columns)
    where = torch.cuda.get_device_name(device) if cuda else (
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, {where}; ms per call (best of {args.repeats}), "
          f"x fp32 F.linear in brackets\n")
    bf16 = " bf16 |" if cuda else ""  # the GPU's usual float baseline
    print(f"| weight | M | fp32 |{bf16} {head} | auto int8 | auto int4 |")
    rows = []  # ms per call by "format backend", for --json
    print("|---|---:|---:|" + "---:|" * (len(columns) + 2 + cuda))
    for label, (n, k) in shapes.items():
        torch.manual_seed(0)
        w = torch.randn(n, k, device=device) * 0.02
        qws = {spec: quantize_weight(w.cpu(), spec).to(device) for spec in formats}
        for m in args.rows:
            x = torch.randn(m, k, device=device)
            base = _best(lambda: F.linear(x, w), args.repeats, sync)  # noqa: B023
            cells, row = [], {"weight": label, "m": m, "fp32_ms": base * 1e3}
            if cuda:
                xb, wb = x.bfloat16(), w.bfloat16()
                t = _best(lambda: F.linear(xb, wb), args.repeats, sync)  # noqa: B023
                cells.append(f"{t * 1e3:.3f} ({base / t:.2f}x)")
            for spec, name in columns:
                backend = BACKENDS[name]
                if not backend.supports(spec, n, k, x.device):
                    cells.append("-")
                    continue
                state = backend.prepare(qws[spec])
                try:
                    t = _best(lambda: backend.run(state, x), args.repeats, sync)  # noqa: B023
                except RuntimeError as exc:
                    cells.append(f"fails ({str(exc)[:30]})")
                    continue
                cells.append(f"{t * 1e3:.3f} ({base / t:.2f}x)")
                row[f"{spec.name} {name}"] = t * 1e3
            auto = []
            for spec in formats:
                prepared: dict = {}
                # activations may be quantized, as in a GGUF import's layers and the model's head
                auto.append(choose(qws[spec], x, prepared, exact=False).name
                            if candidates(spec, n, k, x.device, exact=False) else "-")
            print(f"| {label} | {m} | {base * 1e3:.3f} | " + " | ".join(cells + auto) + " |", flush=True)
            rows.append(row)
    if args.json:
        from speechllm.files import atomic_write_json

        command = "python benchmarks/quant.py kernels " + shlex.join(sys.argv[2:])
        atomic_write_json(args.json, {"command": command, "where": where, "torch": torch.__version__,
                                      "repeats": args.repeats, "rows": rows}, indent=1)


# --- quality ---------------------------------------------------------------------------------------

def _texts(split: str) -> list[str]:
    from speechllm.data_recipes import recipes

    texts = (*recipes.bible_texts(), *recipes.fortune_texts())
    pool = [t.say for t in texts if recipes.split_of(t.key) == split]
    order = np.random.default_rng(0).permutation(len(pool))
    return [pool[i] for i in order]


# name -> (QuantConfig fields, plus "backend" to force a kernel on the body's linears; QUAD tuning steps)
CONFIGS: dict[str, tuple[dict, int]] = {
    "rtn W4A16 g32": ({"method": "rtn"}, 0),
    # what a GGUF import runs on an AVX-512 VNNI CPU: activations as int8 per block of 32 (llama.cpp's Q8)
    "rtn W4A8 blocks (int4-rows)": ({"method": "rtn", "exact_body": False, "backend": "int4-rows"}, 0),
    "awq W4A16 g32": ({"method": "awq"}, 0),
    "rtn W4A16 g64": ({"method": "rtn", "group_size": 64}, 0),
    "awq W4A16 g64": ({"method": "awq", "group_size": 64}, 0),
    "rtn W4A8": ({"method": "rtn", "act_bits": 8}, 0),
    "awq W4A8": ({"method": "awq", "act_bits": 8}, 0),
    "quad W4A8": ({"method": "quad", "act_bits": 8}, 0),
    "rtn W4A4": ({"method": "rtn", "act_bits": 4}, 0),
    "awq W4A4": ({"method": "awq", "act_bits": 4}, 0),
    "quad W4A4": ({"method": "quad", "act_bits": 4}, 0),
    "quad W4A4 + outlier tuning": ({"method": "quad", "act_bits": 4}, -1),  # -1: --tune-steps
}


def quality(args: argparse.Namespace) -> None:
    from speechllm.files import atomic_write_json
    from speechllm.llm import load_llm
    from speechllm.quant import BACKENDS, QuantLinear
    from speechllm.quant.calibrate import perplexity
    from speechllm.quant.model import QuantConfig, calibration_batches, quantize, weight_bytes
    from speechllm.quant.quad import finetune_outliers
    from speechllm.zoo import DEFAULT_LLM

    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    model, tokenizer = load_llm(DEFAULT_LLM, quant="none", prepare=False)
    calib = calibration_batches(tokenizer, _texts("train"), args.seq_len, args.calib_windows)
    evals = calibration_batches(tokenizer, _texts("test"), args.seq_len, args.eval_windows)

    def save(name: str, row: dict) -> None:
        results[name] = {**row, "command": "python benchmarks/quant.py quality " + shlex.join(sys.argv[2:]),
                         "threads": torch.get_num_threads(), "torch": torch.__version__}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(results_path, results, indent=1)

    if "fp32" not in results:
        save("fp32", {"ppl": perplexity(model, evals), "mb": weight_bytes(model) / 2**20, "seconds": 0.0})
    print(f"SmolLM2-135M-Instruct, {len(calib)} x {args.seq_len} calibration tokens (train split), "
          f"{len(evals)} x {args.seq_len} evaluation tokens (test split); "
          f"{torch.get_num_threads()} threads\n",
          flush=True)
    for name in args.configs:
        if name in results:
            continue
        fields, steps = CONFIGS[name]
        fields = dict(fields)
        backend = fields.pop("backend", None)
        spec = QuantConfig(**fields).spec
        if backend and not BACKENDS[backend].supports(spec, 16, 32, torch.device("cpu")):
            print(f"  {name}: skipped ({backend} does not run on this machine)", flush=True)
            continue
        quantized = copy.deepcopy(model)
        t0 = time.perf_counter()
        quantize(quantized, QuantConfig(**fields), calib, progress=args.progress)
        for module_name, m in quantized.named_modules():
            if backend and isinstance(m, QuantLinear) and module_name != "lm_head":
                m.backend = backend
        row: dict = {}
        if steps:
            losses = finetune_outliers(quantized, calib, steps=args.tune_steps, lr=args.tune_lr,
                                       progress=args.progress)
            row["tuning_loss"] = [losses[0], float(np.mean(losses[-5:]))]
        row.update(seconds=time.perf_counter() - t0, ppl=perplexity(quantized, evals),
                   mb=weight_bytes(quantized, include_prepared=False) / 2**20)
        save(name, row)
        print(f"  {name}: perplexity {row['ppl']:.3f} ({row['seconds']:.0f} s)", flush=True)
        del quantized
    base = results["fp32"]["ppl"]
    print("\n| method | weights | activations | perplexity | vs fp32 | weight MB | quantize s |")
    print("|---|---|---|---:|---:|---:|---:|")
    print(f"| fp32 (dequantized GGUF) | fp32 | fp32 | {base:.3f} | - | {results['fp32']['mb']:.0f} | - |")
    for name in CONFIGS:
        if name not in results:
            continue
        r, (fields, _) = results[name], CONFIGS[name]
        group = fields.get("group_size", 32)
        acts = "int8 blocks of 32" if "backend" in fields else "fp32" if fields.get("act_bits", 16) == 16 \
            else f"int{fields['act_bits']}"
        method = name.split(" ")[0].upper() + (" + outlier tuning" if "tuning" in name else "")
        print(f"| {method} | int4 g{group} | {acts} | {r['ppl']:.3f} "
              f"| {(r['ppl'] / base - 1) * 100:+.1f}% | {r['mb']:.0f} | {r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--repeats", type=int, default=20)
    k.add_argument("--compile", action="store_true", help="also time torch.compile's backend (slow to build)")
    k.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU kernels")
    k.add_argument("--rows", type=int, nargs="+", default=[1, 256], help="M: rows of x (1: a decode step)")
    k.add_argument("--shapes", nargs="+", help="only these weights (q/o, k/v, gate/up, down, head, 1B)")
    k.add_argument("--json", help="also write the times here (ms per call)")
    q = sub.add_parser("quality")
    q.add_argument("--results", default="runs/quant_quality.json", help="kept as rows finish (resumable)")
    q.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME")
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--calib-windows", type=int, default=16)
    q.add_argument("--eval-windows", type=int, default=16)
    q.add_argument("--tune-steps", type=int, default=40)
    q.add_argument("--tune-lr", type=float, default=1e-4)
    q.add_argument("--progress", action="store_true")
    for p in (k, q):
        p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"kernels": kernels, "quality": quality}[args.part](args)


if __name__ == "__main__":
    main()
