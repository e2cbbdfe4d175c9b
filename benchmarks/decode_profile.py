"""Where a decode step of the int4 SmolLM2 spends its time, by ``torch.profiler`` (docs/decoding.md).

    .venv/bin/python benchmarks/decode_profile.py --json benchmarks/results/decode-profile.json

SmolLM2-135M-Instruct with int4 weights (the zoo's GGUF, as ``benchmarks/decode.py`` loads it) decodes
``--new-tokens`` greedy tokens through ``speechllm.generation`` (static engine, fused low-bit
projections, no drafts, no end token) under the profiler, after one unprofiled warm-up. Written: each
op's share of the self CPU time (the top ``--top`` and the low-bit kernels), how many int4 kernel calls
a generated token costs, and what a verify pass of speculative decoding costs against a step
(``verify`` in the results).
Times on a shared CPU are inflated; the shares and the ratio, taken in one process, mean more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from speechllm.zoo import DEFAULT_LLM

PROMPT = "The history of the Roman Empire begins"
INT4_OPS = ("speechllm::int4_rows", "aten::_weight_int4pack_mm_for_cpu")  # whichever the choice took
LOW_BIT_OPS = (*INT4_OPS, "quantized::linear_dynamic", "aten::_weight_int8pack_mm", "speechllm::int8_rows")


def profile_decode(new_tokens: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from speechllm.generation import GenerationOptions, generate
    from speechllm.llm import load_llm

    model, tok = load_llm(DEFAULT_LLM, quant="int4")
    ids = tok(PROMPT, return_tensors="pt").input_ids
    options = GenerationOptions(max_new_tokens=new_tokens, eos_token_id=-1, stop_repetition=False,
                                speculative=False)
    with torch.no_grad():
        generate(model, ids, options)  # warm-up: kernels prepared, cache allocated
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            tokens = len(generate(model, ids, options).tokens)
            wall = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    shown = {e.key for e in ranked[:top]} | ({e.key for e in events} & set(LOW_BIT_OPS))
    ops = [{"op": e.key, "calls": e.count, "self_cpu_share": e.self_cpu_time_total / total}
           for e in ranked if e.key in shown]
    int4_calls = sum(e.count for e in events if e.key in INT4_OPS)
    layers = model.config.num_hidden_layers
    return {"model": DEFAULT_LLM, "weights": "int4", "tokens": tokens, "prompt_tokens": ids.shape[1],
            "wall_s": wall, "layers": layers, "int4_calls": int4_calls,
            "int4_calls_per_token": int4_calls / tokens, "int4_calls_per_layer_per_token":
            int4_calls / tokens / layers, "ops": ops}


def verify_cost(sizes: tuple[int, ...] = (2, 3, 4, 8, 12), repeats: int = 30) -> dict:
    """What speculative decoding's verify pass costs against a step: a step (one token) and a pass of
    ``t`` tokens after a ~300-token prompt, the pass scoring its first row only (a draft missed at
    once) or all rows (a draft accepted whole); medians of ``repeats``, each undone by ``rollback``."""
    from speechllm.generation import open_state
    from speechllm.llm import load_llm

    model, tok = load_llm(DEFAULT_LLM, quant="int4")
    ids = tok(" ".join([PROMPT] * 40), return_tensors="pt").input_ids[:, :300]
    with torch.no_grad():
        state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                           torch.arange(ids.shape[1])[None], capacity=400)

        def median_s(run) -> float:
            run()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        def step():
            state.rollback(1, state.step(torch.tensor([5])))

        def verify(t: int, scored: int):
            def run():
                logits = state.extend_lazily(torch.tensor([[5] * t]))
                for j in range(scored):
                    logits(j)
                state.rollback(t, state.logits)
            return run

        step_s = median_s(step)
        rows = [{"tokens": t, "first_row_only": median_s(verify(t, 1)) / step_s,
                 "all_rows": median_s(verify(t, t)) / step_s} for t in sizes]
    return {"prompt_tokens": ids.shape[1], "step_ms": step_s * 1e3, "passes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8, help="ops written, by self CPU time")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = {"decode": profile_decode(args.new_tokens, args.top), "verify": verify_cost()}
    results["meta"] = {
        "command": "python benchmarks/decode_profile.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "threads": args.threads, "torch": torch.__version__, "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg()}
    for op in results["decode"]["ops"]:
        print(f"{op['self_cpu_share']:6.1%} {op['calls']:6d}  {op['op']}")
    verify = results["verify"]
    print(f"a step: {verify['step_ms']:.1f} ms; a verify pass of t tokens, in steps "
          "(first row scored / all rows):")
    for row in verify["passes"]:
        print(f"  t={row['tokens']:2d}: {row['first_row_only']:.2f} / {row['all_rows']:.2f}")
    if args.json:
        from speechllm.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
