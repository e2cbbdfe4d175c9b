"""End-to-end greedy decode speed and memory: transformers' fp32 ``generate`` vs the project's paths.

    .venv/bin/python benchmarks/decode.py                      # both models, every path
    .venv/bin/python benchmarks/decode.py --models smollm2 --new-tokens 64

Models: SmolLM2-135M-Instruct (real weights, from the zoo's GGUF) and a randomly initialised ~1.1B
Llama-shaped model (TinyLlama's shape: hidden 2048, MLP 5632, 22 layers, 32/4 heads, vocab 32000;
speed only). Paths: fp32 / int8 / int4 weights, each decoded by transformers' ``generate`` and by
``speechllm.generation`` (static KV cache, lean forward). Every row runs in its own process (so peak
memory is that path's own), one after the other in the same run; tokens/s is the best of ``--repeats``
runs of ``--new-tokens`` greedy tokens after a short prompt, and the ratio is against the first row
(transformers fp32 generate). Weight memory counts parameters, buffers and the kernels' re-packed
copies (``speechllm.quant.model.weight_bytes``); peak RSS is the process's high-water mark.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

PATHS = [("fp32", "hf"), ("fp32", "runner"), ("int8", "hf"), ("int8", "runner"), ("int4", "hf"),
         ("int4", "runner")]
PROMPT = "The history of the Roman Empire begins"


def _smollm2(weights: str):
    from speechllm.llm import load_llm

    model, tok = load_llm("smollm2-135m-instruct", quant={"fp32": "none"}.get(weights, weights))
    return model, tok(PROMPT, return_tensors="pt").input_ids


def _llama_1b(weights: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from speechllm.llm import prepare_kernels
    from speechllm.quant.model import QuantConfig, quantize

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    if weights != "fp32":
        bits, group = (4, 32) if weights == "int4" else (8, -1)
        quantize(model, QuantConfig(bits=bits, group_size=group))
        prepare_kernels(model)
    return model, torch.randint(0, 32000, (1, 8))


MODELS = {"smollm2": _smollm2, "llama-1b": _llama_1b}


def run_one(model_name: str, weights: str, decoder: str, new_tokens: int, repeats: int) -> dict:
    from speechllm.generation import GenerationOptions, LlamaRunner, generate
    from speechllm.quant.model import weight_bytes

    model, ids = MODELS[model_name](weights)
    best = 0.0
    runner = LlamaRunner(model, ids.shape[1] + new_tokens) if decoder == "runner" else None
    with torch.no_grad():
        for i in range(repeats + 1):  # the first run warms up
            if decoder == "hf":
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                rate = new_tokens / (time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                options = GenerationOptions(max_new_tokens=new_tokens, eos_token_id=-1)
                r = generate(model, ids, options, runner)
                rate = len(r.tokens) / (time.perf_counter() - t0)
            best = max(best, rate) if i else best
    return {"model": model_name, "weights": weights, "decoder": decoder, "tokens_per_s": best,
            "weight_mb": weight_bytes(model) / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (1 is steadier when other jobs share the CPU)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "WEIGHTS", "DECODER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(*args.one, args.new_tokens, args.repeats)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.new_tokens} new tokens, "
          f"best of {args.repeats}\n")
    print("| model | weights | decoder | tokens/s | vs HF fp32 | weight MB | vs fp32 weights | peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        base = None
        for weights, decoder in PATHS:
            cmd = [sys.executable, __file__, "--one", model_name, weights, decoder,
                   "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"| {model_name} | {weights} | {decoder} | failed: {out.stderr.strip()[-200:]} |")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or row
            label = "transformers generate" if decoder == "hf" else "speechllm"
            print(f"| {model_name} | {weights} | {label} "
                  f"| {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base['tokens_per_s']:.2f}x "
                  f"| {row['weight_mb']:.0f} | {row['weight_mb'] / base['weight_mb']:.0%} "
                  f"| {row['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
