"""Whisper's output layer read from a contiguous [D, V] copy of the token embedding
(``TextDecoder.output_weight``) against the embedding's own transpose, in one process.

Three measurements, each alternating the two ways so the machine's drift falls on both:

* the logits product alone (the model's own embedding, 1 / 2 / 8 rows);
* hearing one clip (``transcribe``, the chat's spoken turn), median of the runs;
* a manifest's files through ``transcribe_many`` (the batch job), wall time, and whether every transcript
  is the same both ways.

    python benchmarks/probes/whisper_output_layer.py --manifest corpora/asr-10h/test.jsonl \
        --json benchmarks/results/whisper-output-layer.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from step_timing import best_ms, meta

import speechllm
from speechllm.audio import load_audio
from speechllm.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
WAYS = ("transpose", "contiguous copy")


def way(decoder, name: str) -> None:
    """Make ``decoder`` read its output layer one way: its own code, or the embedding's transpose."""
    if name == "transpose":
        decoder.output_weight = lambda: decoder.token_embedding.weight.T
    else:
        decoder.__dict__.pop("output_weight", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--clip", type=Path, default=ROOT / "examples" / "meeting_slt.flac")
    parser.add_argument("--manifest", type=Path, help="files to transcribe both ways (e.g. a test split)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two ways")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transcriber = speechllm.load(args.model)
    decoder = transcriber.model.decoder

    product = {}
    with torch.no_grad():
        for rows in (1, 2, 8):
            x = torch.randn(rows, decoder.token_embedding.weight.shape[1])
            for name in WAYS:
                way(decoder, name)
                ms = best_ms(lambda x=x: x @ decoder.output_weight(), 20)
                product.setdefault(name, {})[rows] = round(ms, 2)

    clip = load_audio(args.clip)
    hearing = {name: [] for name in WAYS}
    for _ in range(args.rounds):
        for name in WAYS:
            way(decoder, name)
            for _ in range(7):
                start = time.perf_counter()
                transcriber.transcribe(clip)
                hearing[name].append(time.perf_counter() - start)

    batch = None
    if args.manifest:
        rows = read_manifest(args.manifest)
        audio_s = sum(r.duration or 0 for r in rows)
        walls, texts = {name: [] for name in WAYS}, {}
        for _ in range(args.rounds):
            for name in WAYS:
                way(decoder, name)
                start = time.perf_counter()
                texts[name] = [t.text for _, t in transcriber.transcribe_many([r.audio for r in rows])]
                walls[name].append(round(time.perf_counter() - start, 1))
        batch = {"files": len(rows), "audio_s": round(audio_s, 1), "wall_s": walls,
                 "rtf": {n: round(min(w) / audio_s, 4) for n, w in walls.items()},
                 "same_transcripts": sum(a == b for a, b in zip(*texts.values(), strict=True))}

    out = {"product_ms_by_rows": product,
           "hearing_clip_s": {n: round(statistics.median(t), 3) for n, t in hearing.items()},
           "hearing_speedup": round(statistics.median(hearing["transpose"])
                                    / statistics.median(hearing["contiguous copy"]), 3),
           "batch": batch,
           "meta": meta("whisper_output_layer.py", model=args.model, clip=str(args.clip.relative_to(ROOT)),
                        threads=args.threads, rounds=args.rounds)}
    print(json.dumps({k: v for k, v in out.items() if k != "meta"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
