"""How fast WER is counted and what BLEU's smoothing does (docs/transcription-io.md, "Scores").

    .venv/bin/python benchmarks/scores.py --json benchmarks/results/scores.json

WER: ``speechllm.metrics.word_error_rate`` (jiwer; the spoken-form normaliser included) on one pair of
``--words`` words, every tenth word substituted, against a plain Python O(n·m) word edit distance
(the textbook dynamic programme) on the same normalised words, in the same process: both must count
the same errors. BLEU: ``speechllm.metrics_bleu.corpus_bleu`` (sacrebleu, exponential smoothing) of a
sentence with no 4-gram in common with its reference, beside sacrebleu without smoothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

BLEU_REF, BLEU_HYP = "the cat sat on the mat today", "the cat sat in a mat today"


def wer_timing(words: int, seed: int = 0) -> dict:
    from speechllm.metrics import reference_edit_distance, word_error_rate
    from speechllm.text_normalize import get_normalizer

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"  # plain words: the spoken-form normaliser leaves them as they are
    vocab = ["".join(rng.choices(letters, k=6)) for _ in range(500)]
    ref = [rng.choice(vocab) for _ in range(words)]
    hyp = [w if i % 10 else w[::-1] + "x" for i, w in enumerate(ref)]
    ref_text, hyp_text = " ".join(ref), " ".join(hyp)
    t0 = time.perf_counter()
    jiwer_rate = word_error_rate([ref_text], [hyp_text])
    jiwer_s = time.perf_counter() - t0
    norm = get_normalizer("spoken")
    t0 = time.perf_counter()
    python_errors = reference_edit_distance(norm(ref_text).split(), norm(hyp_text).split())
    python_s = time.perf_counter() - t0
    if python_errors != jiwer_rate.errors:
        raise SystemExit(f"jiwer counts {jiwer_rate.errors} errors, the edit distance {python_errors}")
    return {"words": words, "substitutions": sum(a != b for a, b in zip(ref, hyp, strict=True)),
            "errors": jiwer_rate.errors, "jiwer_s": jiwer_s, "python_edit_distance_s": python_s,
            "speedup": python_s / jiwer_s}


def bleu_smoothing() -> dict:
    import sacrebleu

    from speechllm.metrics_bleu import corpus_bleu

    smoothed = corpus_bleu([BLEU_REF], [BLEU_HYP])
    plain = sacrebleu.corpus_bleu([BLEU_HYP], [[BLEU_REF]], smooth_method="none")
    return {"reference": BLEU_REF, "hypothesis": BLEU_HYP, "bleu": smoothed.score,
            "signature": smoothed.signature, "bleu_no_smoothing": plain.score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=3000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = {"wer": wer_timing(args.words), "bleu": bleu_smoothing(),
               "meta": {"command": f"python benchmarks/scores.py --words {args.words}",
                        "cpus": os.cpu_count(), "load_average_before": load_before,
                        "load_average_after": os.getloadavg()}}
    print(json.dumps(results, indent=1))
    if args.json:
        from speechllm.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
