"""``speechllm transcribe FILES... [--output out.jsonl]``: batch speech-to-text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "transcribe audio files, folders, globs or manifests (JSON lines with --output)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="AUDIO",
                        help="audio files, folders (recursive), globs or manifests (.jsonl)")
    parser.add_argument("--output", "-o", type=Path,
                        help='JSON lines: one {"audio", "text", "segments", ...} object per input')
    parser.add_argument("--model", default="whisper-tiny.en", help="zoo name, folder or Hugging Face id")
    parser.add_argument("--batch-size", type=int, default=8, help="segments decoded together")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--resume", action="store_true",
                        help="keep finished rows of --output and transcribe only the rest")
    parser.add_argument("--format", action="append", default=[], choices=["txt", "srt", "vtt"],
                        help="also write <audio stem>.FORMAT per input (repeatable)")
    parser.add_argument("--format-dir", type=Path,
                        help="folder for --format files (default: beside --output)")
    parser.add_argument("--shard", metavar="I/N", help="only every N-th input starting at I (0-based)")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "vad", "fixed"],
                        help="long-audio segmentation: Silero VAD or fixed ≤30 s cuts at quiet points")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on a Ray cluster (ADDRESS, e.g. auto or ray://host:10001; "
                             "no ADDRESS: a local Ray instance)")
    parser.add_argument("--ray-workers", type=int, default=1, help="Ray actors, each holding one model")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no transcripts")


def run(args: argparse.Namespace) -> int:
    from speechllm.apps.batch import expand_inputs, run_batch, shard
    from speechllm.transcriber import WhisperTranscriber

    if args.resume and not args.output:
        raise ValueError("--resume needs --output")
    inputs = shard(expand_inputs(args.inputs), args.shard)
    if not inputs:
        raise ValueError("no audio files found in the given inputs")
    options = dict(model=args.model, device=args.device, beam_size=args.beam_size,
                   batch_size=args.batch_size, segmenter=args.segmenter)
    if args.ray:
        from speechllm.apps.ray_backend import RayTranscriber

        transcriber = RayTranscriber(args.ray, workers=args.ray_workers, **options)
    else:
        transcriber = WhisperTranscriber(**options)
    summary = run_batch(transcriber, inputs, args.output, resume=args.resume,
                        progress=not args.quiet, echo=not args.quiet, formats=tuple(args.format),
                        format_dir=args.format_dir)
    if summary.failed or summary.skipped:
        print(f"{summary.done} transcribed, {summary.failed} failed, {summary.skipped} already done",
              file=sys.stderr)
    return 1 if summary.failed else 0
