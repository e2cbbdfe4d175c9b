"""What a draft token of the starter's draft head costs, against a decode step of its LLM, measured in one
process: the head as trained (float32 layers, torch's ops) and as it drafts (int8 layers, the engine's
native norm and gate: ``speechllm.generation.draft_head.for_drafting``).

    python benchmarks/probes/draft_head_cost.py --threads 2 --json benchmarks/results/draft-head-cost.json
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from speechllm import speechlm_path
from speechllm.generation import DraftHead, HeadDrafter, open_state
from speechllm.speechlm.io import load_speechlm
from speechllm.zoo import STARTER


def _ms(fn, repeats: int) -> float:
    """Best of five rounds of ``repeats`` calls, ms per call."""
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        rounds.append((time.perf_counter() - t0) / repeats * 1e3)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=200, help="tokens in the cache during the steps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
    if not model.config.draft_head:
        sys.exit(f"{args.model} has no draft head")
    feature = torch.randn(model.llm.get_input_embeddings().embedding_dim)
    head, vocab = DraftHead.read(model.folder / model.config.draft_head)
    results = {}
    for label, quantized in (("float32", False), ("int8 (as it drafts)", True)):
        drafter = HeadDrafter(head, vocab, model.llm, min_prob=0.0, quantized=quantized)  # the whole chain
        results[label] = _ms(lambda d=drafter: d.draft(feature, 100, 1), 50)
    with model.text_mode(), torch.no_grad():
        ids = torch.arange(100, 100 + args.context)[None]
        state = open_state(model.llm, model.llm.get_input_embeddings()(ids), torch.ones_like(ids),
                           torch.arange(args.context)[None], capacity=args.context + 8)

        def step():
            state.step(torch.tensor([5]))
            state.rollback(1, state.logits)
        step_ms = _ms(step, 30)
    out = {"head_token_ms": results, "step_ms": step_ms,
           "head_token_steps": {k: v / step_ms for k, v in results.items()},
           "meta": {"command": " ".join(["python benchmarks/probes/draft_head_cost.py", *sys.argv[1:]]),
                    "model": args.model, "threads": args.threads, "context": args.context,
                    "torch": torch.__version__, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}}
    for label, ms in results.items():
        print(f"draft token, {label}: {ms:.3f} ms = {ms / step_ms:.3f} step")
    print(f"decode step (LoRA off, {args.context} tokens in the cache): {step_ms:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
