"""`speechllm translate` es->en on held-out everyday sentences and Bible verses, several models in one run.

    .venv/bin/python benchmarks/translate.py --build corpora/st-eval          # the clips, once
    .venv/bin/python benchmarks/translate.py --data corpora/st-eval \
        --models speechllm-translate speechllm-starter --json benchmarks/results/translate.json

The set: everyday Spanish sentences from a bilingual grammar (``data_recipes/everyday.py``; the English
side is written by hand, not machine-translated) and short Bible verses (Reina-Valera 1909 -> World
English Bible), spoken by Kokoro voices that no training set uses (blends of its style tables, with
espeak-ng's Spanish phonemes). Each model translates every clip through the same path as
``speechllm translate``; BLEU is sacrebleu's (signature in the results). The backbone's *ceiling* is the
same sentences' exact Spanish text, translated by the cascade's LLM with the same prompt. ``stops``
counts why each reply ended (``end``; ``length`` or ``repetition`` would be a reply that ran on).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import time
from pathlib import Path

HELD_OUT_VOICES = (
    "jf_nezumi:0.6+jm_kumo:0.4",
    "jf_tebukuro:0.5+jf_gongitsune:0.5",
    "jm_kumo:0.7+jf_alpha:0.3",
    "jf_gongitsune:0.4+jm_kumo:0.6",
)


def build(out: Path, everyday: int, verses: int, max_words: int) -> None:
    import soundfile as sf
    import soxr

    from speechllm.data_recipes.everyday import HELD_OUT_SEED, everyday_pairs
    from speechllm.data_recipes.texts import held_out_verses
    from speechllm.manifest import ManifestRow, write_manifest
    from speechllm.tts.kokoro import KokoroVoice

    chosen = held_out_verses(verses, max_words)
    items = [
        ("everyday", f"everyday-{i:03d}", es, en)
        for i, (es, en) in enumerate(everyday_pairs(everyday, seed=HELD_OUT_SEED))
    ]
    items += [("bible", f"bible-{v.ref.replace(' ', '_').replace(':', '.')}", v.es, v.en) for v in chosen]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    voices = {name: KokoroVoice(name, language="es") for name in HELD_OUT_VOICES}
    rows = []
    for i, (kind, key, es, en) in enumerate(items):
        path = out / "audio" / f"{key}.flac"
        voice = HELD_OUT_VOICES[i % len(HELD_OUT_VOICES)]
        if not path.is_file():
            audio = soxr.resample(voices[voice].synthesize(es), 24_000, 16_000)
            sf.write(path, audio, 16_000)
        rows.append(
            ManifestRow(
                audio=str(path.absolute()),  # stored relative to the manifest by write_manifest
                text=en,
                task="st",
                lang="es",
                speaker=voice,
                extra={"set": kind, "source_text": es, "target_lang": "en"},
            )
        )
        print(f"{i + 1}/{len(items)} {key}", flush=True)
    write_manifest(out / "test.jsonl", rows)


def _bleu(refs: list[str], hyps: list[str]) -> dict:
    from speechllm.metrics_bleu import corpus_bleu

    b = corpus_bleu(refs, hyps)
    return {"bleu": round(b.score, 2), "signature": b.signature}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="synthesize the clips and test.jsonl into this folder")
    parser.add_argument("--everyday", type=int, default=100)
    parser.add_argument("--verses", type=int, default=250)
    parser.add_argument("--max-words", type=int, default=14, help="verses of at most this many words")
    parser.add_argument("--data", type=Path, help="a folder written by --build")
    parser.add_argument("--models", nargs="+", default=["speechllm-translate"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.build:
        build(args.build, args.everyday, args.verses, args.max_words)
        return
    if not args.data:
        parser.error("--data (or --build) is needed")
    import torch

    import speechllm
    from speechllm.manifest import read_manifest

    torch.set_num_threads(args.threads)
    rows = read_manifest(args.data / "test.jsonl")
    kinds = sorted({r.extra["set"] for r in rows})
    results = []
    for name in args.models:
        start = time.perf_counter()
        model = speechllm.load(name, task="translate", target="en")
        loaded = time.perf_counter()
        transcripts = [model.transcribe(r.audio) for r in rows]
        texts = [t.text for t in transcripts]
        done = time.perf_counter()
        result = {
            "model": name,
            "load_s": round(loaded - start, 1),
            "seconds_per_clip": round((done - loaded) / len(rows), 2),
        }
        if any(t.stop for t in transcripts):  # a speech-LLM's replies: why each ended
            result["stops"] = dict(collections.Counter(t.stop for t in transcripts).most_common())
        for kind in kinds:
            picked = [(r.text, t) for r, t in zip(rows, texts, strict=True) if r.extra["set"] == kind]
            result[kind] = _bleu([p[0] for p in picked], [p[1] for p in picked])
            result[kind]["clips"] = len(picked)
        ceiling = getattr(getattr(model, "model", None), "translate_text", None)
        if ceiling is not None:
            for kind in kinds:
                picked = [r for r in rows if r.extra["set"] == kind]
                sources = [r.extra["source_text"] for r in picked]
                result[kind]["ceiling_from_text"] = _bleu(
                    [r.text for r in picked], ceiling(sources, "Spanish", "English")
                )["bleu"]
        result["examples"] = [
            {"source": r.extra["source_text"], "reference": r.text, "output": t}
            for r, t in list(zip(rows, texts, strict=True))[::25]
        ]
        print(json.dumps(result, ensure_ascii=False), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(["python benchmarks/translate.py", *sys.argv[1:]]),
                    "machine": platform.processor() or platform.machine(),
                    "threads": args.threads,
                    "rows": len(rows),
                    "results": results,
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
