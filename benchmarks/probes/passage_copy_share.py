"""Speculative decoding on typed passage answers, by how much of each answer copies the passage.

    python benchmarks/probes/passage_copy_share.py --threads 2 --rounds 3 \
        --json benchmarks/results/passage-copy-share.json

The same calls as ``decode_e2e.py``'s *passage answers, typed passage* workload (the starter, greedy
against the product's drafts, and the first token alone), over every passage of the sqa test split.
An answer token counts as *copied* where it lies in a run of at least ``--min-run`` answer tokens
that also appears, in order, in the prompt's tokens. Each answer falls in a bucket by its copied
share; per bucket: answers, tokens, the whole-call speedup and the speedup after the first token
(each call's fastest time over the rounds, as in ``decode_e2e.py``).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from step_timing import meta

from speechllm import speechlm_path
from speechllm.generation import GenerationOptions
from speechllm.speechlm.io import load_speechlm
from speechllm.zoo import STARTER

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_e2e import TYPED_PASSAGE, Path_, _generate, _rows  # noqa: E402

BUCKETS = ((0.0, 0.5), (0.5, 0.8), (0.8, 1.01))  # copied share: [low, high)


def copied_share(reply: list[int], prompt: list[int], min_run: int) -> float:
    """The share of ``reply``'s tokens inside a run of at least ``min_run`` of them found in ``prompt``."""
    if not reply:
        return 0.0
    grams = {tuple(prompt[i:i + min_run]) for i in range(len(prompt) - min_run + 1)}
    covered = [False] * len(reply)
    for i in range(len(reply) - min_run + 1):
        if tuple(reply[i:i + min_run]) in grams:
            covered[i:i + min_run] = [True] * min_run
    return sum(covered) / len(reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--manifest", type=Path, default=Path("corpora/sqa-12h/test.jsonl"))
    parser.add_argument("--rows", type=int, default=115)
    parser.add_argument("--min-run", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
    typed = [TYPED_PASSAGE.format(passage=p, question=q) for _, p, q in _rows(args.manifest, args.rows)]
    options = {"greedy": GenerationOptions(max_new_tokens=args.max_new_tokens, speculative=False),
               "speculative": GenerationOptions(max_new_tokens=args.max_new_tokens),
               "first token": GenerationOptions(max_new_tokens=1, speculative=False)}
    paths = {name: Path_(name, [_generate(model, None, t, o) for t in typed]) for name, o in options.items()}
    for round_ in range(args.rounds + 1):  # the first round warms up
        for path in paths.values():
            path.run()
            if round_ == 0:
                path.reset()
    greedy, spec, first = paths["greedy"], paths["speculative"], paths["first token"]
    assert greedy.replies == spec.replies, "drafts changed a reply"
    shares = [copied_share(list(reply), model.prompt_ids(text, False)[0], args.min_run)
              for reply, text in zip(greedy.replies, typed, strict=True)]
    buckets = []
    for low, high in BUCKETS:
        rows = [i for i, s in enumerate(shares) if low <= s < high]
        if not rows:
            continue
        g, s, f = (sum(p.fastest[i] for i in rows) for p in (greedy, spec, first))
        tokens = sum(greedy.tokens[i] for i in rows)
        buckets.append({"copied_share": [low, min(high, 1.0)], "answers": len(rows), "tokens": tokens,
                        "whole_call_speedup": g / s, "after_first_token_speedup": (g - f) / (s - f)})
        print(f"copied {low:.0%}-{min(high, 1.0):.0%}: {len(rows)} answers, {tokens} tokens, "
              f"{g / s:.2f}x whole call, {(g - f) / (s - f):.2f}x after the first token")
    def overall(n: int) -> dict:
        g, s, f = (sum(p.fastest[:n]) for p in (greedy, spec, first))
        return {"whole_call_speedup": g / s, "after_first_token_speedup": (g - f) / (s - f),
                "mean_copied_share": sum(shares[:n]) / n}

    results = {"answers": len(typed), "min_run": args.min_run, "buckets": buckets, "all": overall(len(typed)),
               "first_24": overall(min(24, len(typed))),  # decode_e2e.py's default rows
               "per_answer": [{"copied_share": share, "tokens": greedy.tokens[i],
                               "greedy_s": greedy.fastest[i], "speculative_s": spec.fastest[i],
                               "first_token_s": first.fastest[i]}
                              for i, share in enumerate(shares)],
               "meta": meta("passage_copy_share.py", model=args.model, rounds=args.rounds,
                            max_new_tokens=args.max_new_tokens)}
    for name in ("all", "first_24"):
        r = results[name]
        print(f"{name}: {r['whole_call_speedup']:.2f}x whole call, {r['after_first_token_speedup']:.2f}x "
              f"after the first token; mean copied share {r['mean_copied_share']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
