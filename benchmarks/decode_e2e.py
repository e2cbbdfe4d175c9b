"""Decoding through the product path, batch 1: the calls ``speechllm ask`` and the chat engine make
on the starter model (SmolLM2-135M-Instruct in the GGUF's int4 weights, LoRA, ctc-posterior),
against transformers fp32 ``generate`` and llama.cpp on the same GGUF (the optional
``pip install --no-deps llama-cpp-cffi``, as in ``decode.py``), and speculative decoding (SAM drafts) against
plain greedy.

    .venv/bin/python benchmarks/decode_e2e.py --threads 2 --json benchmarks/results/decode_e2e.json

Workloads (replies up to ``--max-new-tokens``, greedy, the model's end token and repetition guard):

- *chat, typed* (free text): ``SpeechLLM.stream(None, message)``, the chat engine's call for a
  typed turn, and the same prompts through transformers fp32 ``generate`` and llama.cpp.
- *passage answers, typed passage* (copy-heavy): a passage and a question about it typed as one
  message (``generate(None, ...)``).
- *passage answers, spoken passage*: ``speechllm ask FILE QUESTION`` (``generate([audio],
  instruction("passage-question", q))``) on held-out sqa rows; the drafter sees the CTC units.
- *quotes and corrections, typed* (copy-heavy, long): a passage typed with "Repeat this text exactly" or
  "Correct the spelling and punctuation of this text" (``generate(None, ...)``): the reply copies most
  of the prompt. (The shipped starter's transcripts come from Whisper's own decoder, not the LLM, and
  its LLM answers the transcribe instruction in a few words, so a transcript through its LLM is no
  copy-heavy workload; CTC-drafted decoding is covered by the tests on the ctc-posterior adapter.)
- *time to first token after the end of the user's speech*: ``stream(clip, spoken-question)``
  as the chat engine runs a spoken turn (encoder, prefill, first token), median and p90.

Every path runs in turns, ``--rounds`` rounds after a warm-up round, and each path's figure adds up
each call's fastest time over the rounds, so a slow moment of a shared or drifting CPU costs one call of
one round; ratios are within this one run. The
replies with drafts on must equal those with drafts off (counted in ``identical``). Where the model
has a phrase book or a draft head (``config.json`` "phrases", "draft_head"), each workload also runs
without each (``GenerationOptions(phrases=False)``, ``(draft_head=False)``): what each adds.

Tokens/s count the whole call (hearing and prefill included). Drafts act only after the first
token, so each workload also runs its calls for one token (hearing, prefill, first token: the same
with drafts on or off), and ``decode_*`` count the rest of the reply: (tokens - replies) / (seconds -
first-token seconds), as llama.cpp reports its eval rate apart from the prompt's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from speechllm import speechlm_path
from speechllm.audio import load_audio
from speechllm.generation import GenerationOptions, GreedyDecoder
from speechllm.manifest import read_manifest
from speechllm.speechlm.io import load_speechlm
from speechllm.speechlm.model import instruction
from speechllm.zoo import DEFAULT_LLM, STARTER

CHAT = [
    "Tell me about the history of the Roman Empire.",
    "What should I cook for dinner tonight? Give me three ideas.",
    "Write a short poem about the sea.",
    "How do airplanes stay in the air?",
    "Give me some tips for sleeping better.",
    "Why is the sky blue?",
    "Explain how a vaccine trains the immune system.",
    "What are the pros and cons of working from home?",
    "Describe a perfect weekend in the mountains.",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a friendly robot and explain it.",
    "What makes a good team leader?",
]
TYPED_PASSAGE = "{passage}\n\nQuestion: {question} Answer with the words of the passage."
COPY = ("Repeat this text exactly: {passage}", "Correct the spelling and punctuation of this text: {passage}")


def _rows(manifest: Path, limit: int):
    rows = [r for r in read_manifest(manifest) if r.prompt][:limit]
    return [(load_audio(r.audio), r.text, r.prompt) for r in rows]


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Path_:
    """One path of the benchmark: a name, a list of calls, each returning the reply's token count.
    Each call keeps its fastest time over the rounds: a slow moment of a drifting machine costs one
    call of one round, not the path's figure."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls
        self.fastest: list[float] = [float("inf")] * len(calls)
        self.tokens = [0] * len(calls)
        self.replies: list = [None] * len(calls)

    def run(self) -> None:
        for i, call in enumerate(self.calls):
            dt, (self.tokens[i], self.replies[i]) = _timed(call)
            self.fastest[i] = min(self.fastest[i], dt)

    def reset(self) -> None:
        self.fastest = [float("inf")] * len(self.calls)

    @property
    def best(self) -> tuple[float, int]:
        """(seconds, tokens): the calls' fastest times and their tokens."""
        return sum(self.fastest), sum(self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.best[1] / self.best[0]


def _decode_rate(path: Path_, replies: int, first_token_s: float) -> float | None:
    """Tokens/s after each reply's first token; None where that is under a quarter of the call's time
    (a reply of a word or two: the rest is the drift of hearing and prefill between rounds)."""
    seconds, tokens = path.best[0] - first_token_s, path.best[1] - replies
    return tokens / seconds if seconds > 0.25 * path.best[0] and tokens > 0 else None


def _generate(model, audio, text, options):
    def call():
        reply = model.generate(None if audio is None else [audio], text, options)[0]
        return len(reply.tokens), reply.tokens
    return call


def _stream(model, text, options):
    def call():
        pieces = list(model.stream(None, text, options))
        reply = "".join(pieces)
        return len(model.tokenizer.encode(reply, add_special_tokens=False)), reply
    return call


def draft_counts(model, audio, texts, options, phrases, head=None) -> dict[str, int]:
    """Draft tokens proposed and accepted, forward passes after the first token and reply tokens over
    ``texts`` (each with its clip or None), decoded as generate() decodes them, with ``phrases`` and
    ``head``."""
    counts = {"drafted": 0, "accepted": 0, "passes": 0, "tokens": 0}
    for a, text in zip(audio, texts, strict=True):
        with model.text_mode() if a is None else torch.no_grad(), torch.no_grad():
            spliced, seeds, quotes = model._prefill_seeded(None if a is None else [a], [text], options)
            decoder = GreedyDecoder(model._stop_ids, options, seeds[0], phrases, head, quotes)
            out = decoder.run(model._open(spliced, options))[0]
        for key in ("drafted", "accepted", "passes"):
            counts[key] += getattr(decoder.stats, key)
        counts["tokens"] += len(out[0])
    return counts


def _draft_stats(model, audio, texts, options) -> dict:
    """Acceptance of the drafts on the same inputs (the decoder generate() runs, with its counters)."""
    c = draft_counts(model, audio, texts, options, model.phrase_book(), model.draft_head())
    return {"drafted": c["drafted"], "accepted": c["accepted"],
            "acceptance": c["accepted"] / max(c["drafted"], 1),
            "tokens_per_pass": c["tokens"] / max(c["passes"], 1)}


def _hf_fp32(tokenizer, max_new_tokens: int):
    from speechllm.llm import load_llm

    llm, _ = load_llm(DEFAULT_LLM, quant="none")

    def make(text):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]

        def call():
            with torch.no_grad():
                out = llm.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)
            return out.shape[1] - ids.shape[1], None
        return call
    return make


def _llama_cpp(tokenizer, max_new_tokens: int, threads: int):
    """llama.cpp on the same GGUF (``decode.LlamaCpp``, greedy, stopping at the end token), or the reason
    it cannot run here."""
    from decode import LlamaCpp, llama_cpp_binding, zoo_gguf

    binding = llama_cpp_binding()
    if isinstance(binding, str):
        return None, binding
    llm = LlamaCpp(binding, zoo_gguf(), threads, n_ctx=1024)
    stop = frozenset({tokenizer.eos_token_id})

    def make(text):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]

        def call():
            return len(llm.generate(ids, max_new_tokens, stop)), None
        return call
    return make, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--manifest", type=Path, default=Path("corpora/sqa-12h/test.jsonl"))
    parser.add_argument("--rows", type=int, default=24, help="passages per workload (chat: up to 12 prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
    tok = model.tokenizer
    rows = _rows(args.manifest, args.rows)
    greedy = GenerationOptions(max_new_tokens=args.max_new_tokens, speculative=False)
    spec = GenerationOptions(max_new_tokens=args.max_new_tokens)  # the product's default: drafts on
    # what each of the model's own draft sources adds: drafts without it
    without = {"phrase book": (replace(spec, phrases=False), model.phrase_book()),
               "draft head": (replace(spec, draft_head=False), model.draft_head())}
    without = {source: options for source, (options, present) in without.items() if present is not None}
    assert spec.speculative and spec.phrases
    typed = [TYPED_PASSAGE.format(passage=p, question=q) for _, p, q in rows]
    asks = [instruction("passage-question", q) for _, _, q in rows]
    clips = [a for a, _, _ in rows]
    copies = [COPY[i % len(COPY)].format(passage=p) for i, (_, p, _) in enumerate(rows)]
    chat = CHAT[:args.rows]
    workloads = {  # name: (audio per call or None, instructions, product call)
        "chat, typed": ([None] * len(chat), chat, "stream"),
        "passage answers, typed passage": ([None] * len(typed), typed, "generate"),
        "passage answers, spoken passage (ask)": (clips, asks, "generate"),
        "quotes and corrections, typed": ([None] * len(rows), copies, "generate"),
    }
    first = GenerationOptions(max_new_tokens=1, speculative=False)
    paths: list[Path_] = []
    for name, (audio, texts, kind) in workloads.items():
        labels = [("greedy", greedy), ("speculative", spec), ("first token", first)]
        labels += [(f"speculative, no {source}", options) for source, options in without.items()]
        for label, options in labels:
            if kind == "stream":
                calls = [_stream(model, t, options) for t in texts]
            else:
                calls = [_generate(model, a, t, options) for a, t in zip(audio, texts, strict=True)]
            paths.append(Path_(f"{name} | {label}", calls))
    make_hf = _hf_fp32(tok, args.max_new_tokens)
    paths.append(Path_("chat, typed | transformers fp32 generate", [make_hf(t) for t in chat]))
    make_cpp, cpp_missing = _llama_cpp(tok, args.max_new_tokens, args.threads)
    if make_cpp is not None:
        paths.append(Path_("chat, typed | llama.cpp (same GGUF)", [make_cpp(t) for t in chat]))
    for _ in range(args.rounds + 1):  # the first round warms up (kernel choice, caches)
        for path in paths:
            path.run()
        if _ == 0:
            for path in paths:
                path.reset()
    by_name = {p.name: p for p in paths}
    results = {"rows": []}
    for name, (audio, texts, _kind) in workloads.items():
        g, s = by_name[f"{name} | greedy"], by_name[f"{name} | speculative"]
        first_s = by_name[f"{name} | first token"].best[0]
        stats = _draft_stats(model, audio, texts, spec)
        decode_g, decode_s = (_decode_rate(p, len(texts), first_s) for p in (g, s))
        ablations = {}
        for source in without:
            n = by_name[f"{name} | speculative, no {source}"]
            decode_n = _decode_rate(n, len(texts), first_s)
            key = source.replace(" ", "_")
            ablations[f"decode_speedup_no_{key}"] = decode_n / decode_g if decode_g and decode_n else None
            ablations[f"identical_no_{key}"] = sum(a == b for a, b in zip(g.replies, n.replies, strict=True))
        results["rows"].append({
            "workload": name, "greedy_tokens_per_s": g.tokens_per_s,
            "speculative_tokens_per_s": s.tokens_per_s, "speedup": s.tokens_per_s / g.tokens_per_s,
            "first_token_s": first_s, "decode_greedy_tokens_per_s": decode_g,
            "decode_speculative_tokens_per_s": decode_s,
            "decode_speedup": decode_s / decode_g if decode_g and decode_s else None,
            **ablations,
            "tokens": g.best[1], "replies": len(texts),
            "identical": sum(a == b for a, b in zip(g.replies, s.replies, strict=True)),
            **stats})
    ttft = []
    for clip in clips:  # a spoken turn: the user's speech has ended, the reply's first text is shown
        t0 = time.perf_counter()
        next(iter(model.stream(clip, instruction("spoken-question"), spec)))
        ttft.append(time.perf_counter() - t0)
    chat_g, chat_s = by_name["chat, typed | greedy"], by_name["chat, typed | speculative"]
    hf = by_name["chat, typed | transformers fp32 generate"]
    cpp = by_name.get("chat, typed | llama.cpp (same GGUF)")
    results["chat"] = {
        "product_greedy_tokens_per_s": chat_g.tokens_per_s,
        "product_speculative_tokens_per_s": chat_s.tokens_per_s,
        "transformers_fp32_tokens_per_s": hf.tokens_per_s,
        # the product path decodes with the default options: drafts on
        "vs_transformers_fp32": chat_s.tokens_per_s / hf.tokens_per_s,
        "llama_cpp_tokens_per_s": cpp.tokens_per_s if cpp else None,
        "vs_llama_cpp": chat_s.tokens_per_s / cpp.tokens_per_s if cpp else None,
        "llama_cpp_missing": cpp_missing,
    }
    results["ttft_s"] = {"median": statistics.median(ttft), "p90": sorted(ttft)[-(-9 * len(ttft) // 10) - 1],
                         "turns": len(ttft)}
    results["meta"] = {"command": " ".join(["python benchmarks/decode_e2e.py", *sys.argv[1:]]),
                       "model": args.model, "threads": args.threads, "rounds": args.rounds,
                       "phrase_book_replies": len(model.phrase_book() or ()),
                       "draft_head": model.config.draft_head or None,
                       "max_new_tokens": args.max_new_tokens, "torch": torch.__version__,
                       "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "load_average_before": load_before, "load_average_after": os.getloadavg(),
                       "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    ablation_keys = [f"decode_speedup_no_{source.replace(' ', '_')}" for source in without]
    print("| workload | greedy tok/s | speculative tok/s | speedup | after the first token "
          + "".join(f"| (no {source}) " for source in without) + "| acceptance | tokens/pass | identical |")
    print("|---|---:|---:|---:|---:|" + "---:|" * (len(without) + 3))
    for r in results["rows"]:
        after = [f"{r[k]:.2f}x" if r[k] else "–" for k in ("decode_speedup", *ablation_keys)]
        print(f"| {r['workload']} | {r['greedy_tokens_per_s']:.1f} | {r['speculative_tokens_per_s']:.1f} "
              f"| {r['speedup']:.2f}x | {' | '.join(after)} | {r['acceptance']:.0%} "
              f"| {r['tokens_per_pass']:.2f} | {r['identical']}/{r['replies']} |")
    c = results["chat"]
    print(f"\nchat, typed: product path {c['product_greedy_tokens_per_s']:.1f} tok/s greedy, "
          f"{c['product_speculative_tokens_per_s']:.1f} speculative; transformers fp32 "
          f"{c['transformers_fp32_tokens_per_s']:.1f} ({c['vs_transformers_fp32']:.2f}x); llama.cpp "
          + (f"{c['llama_cpp_tokens_per_s']:.1f} ({c['vs_llama_cpp']:.0%})" if cpp else cpp_missing))
    t = results["ttft_s"]
    print(f"time to first token after the user's speech: median {t['median']:.2f} s, p90 {t['p90']:.2f} s "
          f"({t['turns']} spoken turns); load average {load_before} -> {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
