"""ASR side by side: speech-LLMs, the project's Whisper, and faster-whisper on the same tiny.en weights.

    .venv/bin/python benchmarks/asr.py --manifest corpora/asr-10h/test.jsonl --limit 200 \
        --speechllm runs/lego speechllm-starter

Each ``--speechllm`` model folder (or zoo name) is one more system, transcribing through
``speechllm.load`` exactly as ``speechllm transcribe --model`` does.
Every system transcribes the same files in one run, with the same thread count; the table
gives WER (jiwer, after ``--normalizer``: spoken-form words or whisper's English normaliser)
and real-time factor (wall time / audio time, audio decoding included, after one warm-up
file) and, when the files come from at most six speakers (the held-out test voices), the WER
of each. faster-whisper comes from the optional ``bench`` extra (``pip install -e '.[bench]'``)
and is skipped when missing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from speechllm.manifest import read_manifest
from speechllm.metrics import word_error_rate
from speechllm.text_normalize import NORMALIZERS
from speechllm.zoo import DEFAULT_ASR

REPO = Path(__file__).resolve().parent.parent
System = Callable[[list[str]], list[str]]
MAX_SPEAKER_COLUMNS = 6


def wer_by_speaker(speakers: list[str | None], refs: list[str], hyps: list[str],
                   normalizer: str = "spoken") -> dict[str, float]:
    """WER of each speaker's files (pooled over its words), speakers in sorted order."""
    groups: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker or "?", []).append(i)
    return {
        speaker: word_error_rate([refs[i] for i in idx], [hyps[i] for i in idx], normalizer).rate
        for speaker, idx in sorted(groups.items())
    }


def transcriber_system(model) -> System:
    """Any object with ``transcribe_many`` (the batch protocol); a failed file scores as empty text."""

    def run(paths: list[str]) -> list[str]:
        return [r.text if not isinstance(r, Exception) else "" for _, r in model.transcribe_many(paths)]

    return run


def speechllm_whisper(args, dtype: torch.dtype, quant: str | None = None) -> System:
    from speechllm.transcriber import WhisperTranscriber

    return transcriber_system(WhisperTranscriber(args.model, device="cpu", beam_size=args.beam_size,
                                                 batch_size=args.batch_size, dtype=dtype, quant=quant))


def faster_whisper(args) -> System:
    from faster_whisper import WhisperModel

    from speechllm.zoo import resolve

    model = WhisperModel(str(resolve(args.model).path), device="cpu", compute_type="int8",
                         cpu_threads=args.threads)

    def run(paths: list[str]) -> list[str]:
        out = []
        for path in paths:
            segments, _ = model.transcribe(path, beam_size=args.beam_size, language="en",
                                           without_timestamps=True, vad_filter=False)
            out.append(" ".join(s.text.strip() for s in segments))
        return out

    return run


def speechllm_model(args, name: str) -> System:
    import speechllm

    return transcriber_system(speechllm.load(name, device="cpu", beam_size=args.beam_size,
                                             batch_size=args.batch_size))


SYSTEMS: dict[str, Callable] = {
    "speechllm-whisper fp32": lambda a: speechllm_whisper(a, torch.float32),
    "speechllm-whisper bf16": lambda a: speechllm_whisper(a, torch.bfloat16),
    "speechllm-whisper int8": lambda a: speechllm_whisper(a, torch.float32, "int8"),  # transcribe --quant
    "speechllm-whisper int4": lambda a: speechllm_whisper(a, torch.float32, "int4"),
    "faster-whisper int8": faster_whisper,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=REPO / "examples" / "manifest.jsonl")
    parser.add_argument("--model", default=DEFAULT_ASR)
    parser.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--speechllm", nargs="*", default=[], metavar="MODEL",
                        help="speech-LLM folders or zoo names to add as systems")
    parser.add_argument("--normalizer", default="spoken", choices=list(NORMALIZERS),
                        help="text normaliser both sides go through before WER (jiwer): spoken = the "
                             "project's spoken-form words, whisper = openai-whisper's EnglishTextNormalizer "
                             "(as published English WERs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = read_manifest(args.manifest)
    rows = rows[: args.limit] if args.limit else rows
    paths, refs = [r.audio for r in rows], [r.text for r in rows]
    speakers = [r.speaker for r in rows]
    per_speaker = len(set(speakers)) <= MAX_SPEAKER_COLUMNS and any(speakers)
    audio_seconds = sum(r.duration or 0.0 for r in rows)
    if not audio_seconds:
        from speechllm.audio import audio_info

        audio_seconds = sum(audio_info(p).duration for p in paths)

    systems = {name: SYSTEMS[name] for name in args.systems}
    for name in args.speechllm:
        systems[f"speech-LLM {name}"] = lambda a, n=name: speechllm_model(a, n)
    results = []
    print(f"{len(rows)} files, {audio_seconds / 60:.1f} min of audio, {args.threads} threads, "
          f"beam {args.beam_size}; WER by jiwer after the {args.normalizer!r} normaliser")
    names = sorted({s or "?" for s in speakers}) if per_speaker else []
    print("| system | WER | RTF | wall s |" + "".join(f" {n} |" for n in names))
    print("|---|---|---|---|" + "---|" * len(names))
    for name, build in systems.items():
        try:
            system = build(args)
        except ImportError as exc:
            print(f"| {name} | skipped: {exc} | | |")
            continue
        system(paths[:1])  # warm-up
        start = time.perf_counter()
        hyps = system(paths)
        wall = time.perf_counter() - start
        wer = word_error_rate(refs, hyps, args.normalizer)
        result = {"system": name, "wer": wer.rate, "normalizer": args.normalizer,
                  "rtf": wall / audio_seconds, "wall_s": wall,
                  "files": len(rows), "audio_s": audio_seconds}
        cells = ""
        if per_speaker:
            result["wer_by_speaker"] = wer_by_speaker(speakers, refs, hyps, args.normalizer)
            cells = "".join(f" {100 * w:.2f}% |" for w in result["wer_by_speaker"].values())
        results.append(result)
        rtf = wall / audio_seconds
        print(f"| {name} | {100 * wer.rate:.2f}% | {rtf:.3f} | {wall:.1f} |{cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
