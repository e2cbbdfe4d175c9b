"""What a draft token of the starter's draft head costs, against a decode step of its LLM, measured in one
process: the head as trained (float32 layers, torch's ops) and as it drafts (int8 layers, the engine's
native norm and gate: ``speechllm.generation.draft_head.for_drafting``).

    python benchmarks/probes/draft_head_cost.py --threads 2 --json benchmarks/results/draft-head-cost.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from step_timing import best_ms, cached_state, meta, one_step

from speechllm import speechlm_path
from speechllm.generation import DraftHead, HeadDrafter
from speechllm.speechlm.io import load_speechlm
from speechllm.zoo import STARTER


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
        results[label] = best_ms(lambda d=drafter: d.draft(feature, 100, 1), 50)
    with model.text_mode(), torch.no_grad():
        step_ms = best_ms(one_step(cached_state(model.llm, args.context)), 30)
    out = {"head_token_ms": results, "step_ms": step_ms,
           "head_token_steps": {k: v / step_ms for k, v in results.items()},
           "meta": meta("draft_head_cost.py", model=args.model, threads=args.threads, context=args.context)}
    for label, ms in results.items():
        print(f"draft token, {label}: {ms:.3f} ms = {ms / step_ms:.3f} step")
    print(f"decode step (LoRA off, {args.context} tokens in the cache): {step_ms:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
