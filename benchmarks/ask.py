"""`speechllm ask` on held-out spoken questions and spoken passages, several models in one run.

    .venv/bin/python benchmarks/ask.py --models speechllm-starter runs/sqa-text \
        --manifest corpora/sqa-12h/test.jsonl --json benchmarks/results/ask.json
    .venv/bin/python benchmarks/ask.py --models speechllm-starter \
        --manifest corpora/passages-10h/test.jsonl --json benchmarks/results/ask-grounded.json

Rows of an ``sqa`` manifest are either a spoken question (the audio asks it) or a spoken passage
with a text question about it (``prompt``). Each model answers every row greedily through the same
path as ``speechllm ask`` (the model's own prompt format, batched generation) and is scored as the
trainer scores it (``speechllm.train.evaluate``): *accuracy* is the share of replies that contain
the reference answer as whole words after normalisation; *answered* (IFR) is the share of replies
that are not empty and not a near copy of what was said (a reply that transcribes the question does
not answer it). A ``passages`` manifest also has questions the passage does not answer (the row's
``source`` ``unanswered:...``, answer "The recording does not say."): their accuracy is the share of
replies saying so, and *says it is not stated* on the ``answered`` rows is the share of answerable
questions wrongly refused. Test rows are held out by text and spoken by voices no training row uses. Spoken
questions are also scored by kind (the row's ``source``: ``arithmetic``, ``quiz``), since a model's
skills (speechllm.speechlm.skills) answer the sums without its LLM.

``--answers quoted free`` runs each model twice: answers to passage questions held to quotes of what
was heard or the refusal (``quoted``, what ``speechllm ask`` does), and worded freely (``free``,
``speechllm ask --free-answer``); a free run's model is named ``NAME (free answers)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from speechllm import speechlm_path
from speechllm.manifest import read_manifest
from speechllm.speechlm.io import load_speechlm
from speechllm.train import evaluate

ANSWERS = {"quoted": True, "free": False}  # --answers: GenerationOptions.quote_answers
KEYS = {"passage": ("qa_acc/passage-question", "ifr/passage-question"),
        "spoken": ("qa_acc/spoken-question", "ifr/spoken-question")}


def kind_of(row) -> str | None:
    """A spoken question's kind from its ``source`` ("quiz:state" -> "quiz"); None without one."""
    source = row.extra.get("source")
    return source.split(":")[0] if isinstance(source, str) and source else None


def summary(result: dict) -> str:
    """One line of a model's figures (the parts its manifest has)."""
    parts = []
    for kind in KEYS:
        figures = result[kind]
        if not figures["items"]:
            continue
        by_kind = ", ".join(f"{k} {v:.3f}" for k, v in figures["by_kind"].items())
        parts.append(f"{kind} accuracy {figures['accuracy']:.3f}" + (f" ({by_kind})" if by_kind else "")
                     + f", answered {figures['answered']:.3f}")
    if result["passage"]["not_stated_by_kind"]:
        parts.append("says it is not stated: " + ", ".join(
            f"{k} {v:.3f}" for k, v in result["passage"]["not_stated_by_kind"].items()))
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders or zoo names")
    parser.add_argument("--manifest", required=True, type=Path, help="an sqa manifest (e.g. a test split)")
    parser.add_argument("--limit", type=int, default=None, help="first N rows only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answers", nargs="+", choices=ANSWERS, default=["quoted"],
                        help="how passage questions are answered; each model runs once per mode")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_manifest(args.manifest)[: args.limit]
    counts = {"passage": sum(bool(r.prompt) for r in rows), "spoken": sum(not r.prompt for r in rows)}
    kinds = [kind_of(r) for r in rows if not r.prompt]
    counts["spoken_by_kind"] = {kind: kinds.count(kind) for kind in sorted(set(kinds) - {None})}
    print(f"{len(rows)} rows ({counts['passage']} spoken passages + text question, {counts['spoken']} "
          f"spoken questions) from {args.manifest}")
    results = []
    for name in args.models:
        if speechlm_path(name) is None:
            parser.error(f"{name}: not a speech-LLM folder or zoo name")
    for name, answers in ((name, answers) for name in args.models for answers in args.answers):
        start = time.perf_counter()
        model = load_speechlm(speechlm_path(name), device="cpu")
        loaded = time.perf_counter()
        metrics = evaluate(model, rows, args.batch_size, args.max_new_tokens, progress=True, group=kind_of,
                           quote_answers=ANSWERS[answers])
        done = time.perf_counter()
        result = {"model": name if ANSWERS[answers] else f"{name} (free answers)", "answers": answers,
                  "load_s": round(loaded - start, 2), "answer_s": round(done - loaded, 1)}
        for kind, (acc, ifr) in KEYS.items():
            result[kind] = {"items": counts[kind], "accuracy": metrics.get(acc), "answered": metrics.get(ifr)}
        for kind, (acc, _) in KEYS.items():
            result[kind]["by_kind"] = {key.rsplit("/", 1)[1]: value for key, value in metrics.items()
                                       if key.startswith(acc + "/")}
        not_stated = "qa_not_stated/passage-question"
        result["passage"]["not_stated"] = metrics.get(not_stated)
        result["passage"]["not_stated_by_kind"] = {key.rsplit("/", 1)[1]: value
                                                   for key, value in metrics.items()
                                                   if key.startswith(not_stated + "/")}
        result["skills"] = list(getattr(model.config, "skills", ()))
        result["examples"] = metrics["examples"]
        results.append(result)
        print(f"{result['model']}: {summary(result)}; {result['answer_s']} s for {len(rows)} rows")
        del model
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": "python benchmarks/ask.py " + " ".join(
                      ["--models", *args.models, "--manifest", str(args.manifest), "--answers", *args.answers]
                      + (["--limit", str(args.limit)] if args.limit else [])),
                  "manifest": str(args.manifest), "rows": len(rows), "counts": counts,
                  "threads": args.threads, "machine": platform.processor() or platform.machine(),
                  "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
