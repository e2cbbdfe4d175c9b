"""Whisper's decoding choices: greedy alone, the temperature fallback (``transcribe``'s default: one sample
at each hotter temperature) or the best of five samples, and beam search, on clean files and noisy copies.

    python benchmarks/probes/whisper_decoding.py --manifest corpora/asr-10h/test.jsonl --snr 5 \
        --json benchmarks/results/whisper-decoding.json

Each file of the manifest is transcribed as ``speechllm transcribe`` does (``WhisperTranscriber``) under
each decoding of :data:`DECODINGS`, as it is and with white or pink noise (alternating per file, seeded)
at each ``--snr``. Per condition: WER (spoken-form words), wall seconds, the real-time factor and the
segments a hotter temperature wrote (windows that failed the loop or log-probability checks at 0).
Conditions run in turns after one warm-up file, in one process.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from step_timing import meta

from speechllm.audio import SAMPLE_RATE, load_audio
from speechllm.augment import add_noise
from speechllm.manifest import read_manifest
from speechllm.metrics import word_error_rate
from speechllm.transcriber import WhisperTranscriber
from speechllm.zoo import DEFAULT_ASR

# name -> WhisperTranscriber keywords (none: transcribe's default)
DECODINGS = {
    "greedy (--temperature 0)": {"temperature": 0.0},
    "fallback (default: one sample)": {},
    "fallback, best of 5 samples (--best-of 5)": {"best_of": 5},
    # openai-whisper's CLI defaults
    "beam 5, then the fallback, best of 5 (--beam-size 5 --best-of 5)": {"beam_size": 5, "best_of": 5},
}


def noisy_copies(paths: list[str], snr_db: float, folder: Path, seed: int = 0) -> list[str]:
    """Each file with white (even rows) or pink (odd rows) noise at ``snr_db``, written to ``folder``."""
    rng = np.random.default_rng(seed)
    out = []
    for i, path in enumerate(paths):
        noisy = add_noise(load_audio(path), rng, snr_db, "pink" if i % 2 else "white")
        target = folder / f"{i:05d}.wav"
        sf.write(target, noisy, SAMPLE_RATE)
        out.append(str(target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("corpora/asr-10h/test.jsonl"))
    parser.add_argument("--model", default=DEFAULT_ASR)
    parser.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    parser.add_argument("--snr", type=float, nargs="*", default=[5.0], help="noise levels in dB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = read_manifest(args.manifest)
    rows = rows[:args.limit] if args.limit else rows
    refs = [r.text for r in rows]
    audio_s = sum(load_audio(r.audio).size for r in rows) / SAMPLE_RATE
    transcribers = {name: WhisperTranscriber(args.model, device="cpu", **options)
                    for name, options in DECODINGS.items()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        conditions = {"clean": [r.audio for r in rows]}
        for snr in args.snr:
            folder = Path(tmp) / f"snr{snr:g}"
            folder.mkdir()
            conditions[f"{snr:g} dB noise"] = noisy_copies([r.audio for r in rows], snr, folder)
        for condition, paths in conditions.items():
            for name, transcriber in transcribers.items():
                list(transcriber.transcribe_many(paths[:1]))  # warm-up
                t0 = time.perf_counter()
                out = [r for _, r in transcriber.transcribe_many(paths)]
                wall = time.perf_counter() - t0
                hyps = [r.text if not isinstance(r, Exception) else "" for r in out]
                hot = sum(s.temperature > 0 for r in out if not isinstance(r, Exception) for s in r.segments)
                row = {"audio": condition, "decoding": name, "wer": word_error_rate(refs, hyps).rate,
                       "wall_s": wall, "rtf": wall / audio_s, "hot_segments": hot,
                       "failed": sum(isinstance(r, Exception) for r in out)}
                results.append(row)
                print(f"| {condition} | {name} | {100 * row['wer']:.2f} % | {row['rtf']:.3f} | {hot} |",
                      flush=True)
    report = {"rows": results, "meta": meta("whisper_decoding.py", model=args.model, files=len(rows),
                                            audio_s=audio_s, threads=args.threads)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
