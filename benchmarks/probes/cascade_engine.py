"""The translation cascade's LLM (``speechllm-translate``: Gemma 3 270M) on the static engine against the
fallback (transformers' forward and cache), in one process on the same heard transcripts: each clip is
heard once, then translated by each engine. Reports the LLM's seconds per clip, BLEU per set, and how
many translations differ.

    python benchmarks/translate.py --build corpora/st-eval
    python benchmarks/probes/cascade_engine.py --data corpora/st-eval --threads 2 \\
        --json benchmarks/results/cascade-engine.json
"""

import argparse
import json
import time
from pathlib import Path

import sacrebleu
import torch
from step_timing import meta

from speechllm import speechlm_path
from speechllm.audio import load_audio
from speechllm.generation import GenerationOptions
from speechllm.manifest import read_manifest
from speechllm.speechlm.io import load_speechlm
from speechllm.speechlm.tasks import instruction

ENGINES = {"fallback (transformers forward)": "hf", "static engine": "auto"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="speechllm-translate")
    parser.add_argument("--data", type=Path, required=True, help="from benchmarks/translate.py --build")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
    rows = read_manifest(args.data / "test.jsonl")
    clips = [load_audio(r.audio) for r in rows]
    heard = {id(clip): model.hear([clip]) for clip in clips}  # hearing once, outside the timing
    model.hear = lambda audio: heard[id(audio[0])]
    asked = instruction("translate", target="English")
    outputs, seconds = {}, {}
    for label, engine in ENGINES.items():
        options = GenerationOptions(max_new_tokens=96, engine=engine)
        model.generate([clips[0]], asked, options)  # kernel choices, caches
        t0 = time.perf_counter()
        outputs[label] = [model.generate([clip], asked, options)[0].text for clip in clips]
        seconds[label] = (time.perf_counter() - t0) / len(clips)
    sets = sorted({r.extra["set"] for r in rows})
    results = {}
    for label, texts in outputs.items():
        bleu = {}
        for name in sets:
            pick = [i for i, r in enumerate(rows) if r.extra["set"] == name]
            bleu[name] = sacrebleu.corpus_bleu([texts[i] for i in pick], [[rows[i].text for i in pick]]).score
        results[label] = {"llm_seconds_per_clip": seconds[label], "bleu": bleu}
        print(f"{label}: {seconds[label]:.3f} s a clip (the LLM), BLEU " +
              ", ".join(f"{k} {v:.2f}" for k, v in bleu.items()))
    first, second = outputs.values()
    differ = sum(a != b for a, b in zip(first, second, strict=True))
    speedup = seconds["fallback (transformers forward)"] / seconds["static engine"]
    print(f"static engine {speedup:.2f}x the fallback; {differ} of {len(rows)} translations differ")
    out = {"engines": results, "speedup": speedup, "differ": differ, "clips": len(rows),
           "meta": meta("cascade_engine.py", model=args.model, threads=args.threads)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
