"""What the starter's LoRA costs a decode step: its speech turns (ask, translate, a spoken chat turn) run the
LLM with the LoRA on, its typed turns with it off. One process, the same cache: LoRA off; LoRA on with the
deltas added by torch (two factor products a layer and projection, ``generation.fused.lora_delta``); LoRA
on with the deltas added by the engine's native call (``generation.rowwise.NativeLora``: one call for q,
k and v, one for o). Also a verify pass of 4 tokens for each, in steps.

    python benchmarks/probes/lora_step.py --threads 2 --json benchmarks/results/lora-step.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from step_timing import best_ms, cached_state, meta, one_step

from speechllm import speechlm_path
from speechllm.generation import rowwise, static
from speechllm.speechlm.io import load_speechlm
from speechllm.zoo import STARTER


def timings(llm, context: int) -> dict[str, float]:
    """A step and a verify pass of 4 tokens after ``context`` tokens, ms."""
    static._ENGINES.clear()  # the engine (and its layers' delta adders) built anew for this setting
    state = cached_state(llm, context)

    def verify():
        state.extend_lazily(torch.tensor([[5, 6, 7, 8]]))
        state.rollback(4, state.logits)
    return {"step_ms": best_ms(one_step(state), 30), "verify4_ms": best_ms(verify, 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=200, help="tokens in the cache")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
    if not rowwise.NativeLora.available():
        sys.exit("no C compiler here: the native LoRA call cannot be built")
    native = rowwise.NativeLora.available
    results = {}
    with torch.no_grad():
        with model.text_mode():
            results["LoRA off"] = timings(model.llm, args.context)
        try:
            rowwise.NativeLora.available = staticmethod(lambda: False)
            results["LoRA on, deltas in torch"] = timings(model.llm, args.context)
        finally:
            rowwise.NativeLora.available = native
        results["LoRA on, deltas native"] = timings(model.llm, args.context)
    off = results["LoRA off"]["step_ms"]
    for label, r in results.items():
        r["step_vs_lora_off"] = r["step_ms"] / off
        r["verify4_steps"] = r["verify4_ms"] / r["step_ms"]
        print(f"{label}: step {r['step_ms']:.2f} ms ({r['step_vs_lora_off']:.2f}x LoRA off), "
              f"verify pass of 4 {r['verify4_ms']:.2f} ms ({r['verify4_steps']:.2f} steps)")
    out = {"settings": results,
           "meta": meta("lora_step.py", model=args.model, lora=str(model.config.lora), threads=args.threads,
                        context=args.context)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
