"""Whether ``torch.compile`` pays on the engine's decode step: the starter's LLM (LoRA off, as typed turns
run it), one step after a prompt, eager against ``torch.compile(engine.forward)``. Two builds, each in
its own process: the engine as it runs (native kernels through ctypes) and with ``SPEECHLLM_NATIVE=0``
(torch's ops only: int4pack, SDPA, torch's norms), where the compiler can see the whole step.

    python benchmarks/probes/compile_step.py --threads 2 --json benchmarks/results/compile-step.json
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from step_timing import best_ms, cached_state, meta, one_step


def measure(model_name: str, context: int) -> dict:
    """Eager and compiled step times of this process's build of the engine."""
    import torch._dynamo

    from speechllm import speechlm_path
    from speechllm.generation.static import engine_for
    from speechllm.speechlm.io import load_speechlm

    model = load_speechlm(speechlm_path(model_name), device="cpu").eval()
    with model.text_mode(), torch.no_grad():
        step = one_step(cached_state(model.llm, context))
        eager_logits = step()
        eager = best_ms(step, 30)
        engine = engine_for(model.llm)
        engine.forward = torch.compile(engine.forward, dynamic=False)
        t0 = time.perf_counter()
        compiled_logits = step()  # the first call compiles
        first_call_s = time.perf_counter() - t0
        compiled = best_ms(step, 30)
        graph_breaks = torch._dynamo.utils.counters["graph_break"]
    return {"eager_step_ms": eager, "compiled_step_ms": compiled, "compiled_vs_eager": compiled / eager,
            "first_compiled_call_s": first_call_s, "graph_breaks": sum(graph_breaks.values()),
            "max_logit_difference": float((compiled_logits - eager_logits).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speechllm-starter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=200, help="tokens in the cache during the steps")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:  # one build, measured in this process: its result on the last line
        print(json.dumps(measure(args.model, args.context)))
        return
    builds = {"native kernels (as shipped)": "1", "torch ops only (SPEECHLLM_NATIVE=0)": "0"}
    results = {}
    for label, native in builds.items():
        command = [sys.executable, __file__, "--child", "--model", args.model, "--threads", str(args.threads),
                   "--context", str(args.context)]
        done = subprocess.run(command, env={**os.environ, "SPEECHLLM_NATIVE": native}, capture_output=True,
                              text=True, check=True)
        results[label] = r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label}: eager {r['eager_step_ms']:.2f} ms, compiled {r['compiled_step_ms']:.2f} ms "
              f"({r['compiled_vs_eager']:.2f}x the time; first call {r['first_compiled_call_s']:.1f} s, "
              f"{r['graph_breaks']} graph breaks, logits differ by {r['max_logit_difference']:.1e})")
    out = {"builds": results,
           "meta": meta("compile_step.py", model=args.model, threads=args.threads, context=args.context)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
