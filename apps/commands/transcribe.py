"""``speechllm transcribe FILES... [--output out.jsonl]``: batch speech-to-text.

:func:`add_model_options` and :func:`run_task` are shared with ``translate`` and ``ask``: the
three commands are one batch job (inputs, segmentation, JSON lines, resume, shards) run with
a different instruction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechllm.apps.commands.weights import add_weights_option

HELP = "transcribe audio files, folders, globs or manifests (JSON lines with --output)"
FORMAT_NAMES = ("txt", "srt", "vtt", "tsv", "json")  # speechllm.apps.subtitles.FORMATS (imported late: torch)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", type=Path,
                        help='JSON lines: one {"audio", "text", "segments", ...} object per input')
    parser.add_argument("--model", default=None,
                        help="zoo name, folder or Hugging Face id (default: whisper-tiny.en for transcribe, "
                             "the shipped speechllm-starter for translate and ask)")
    parser.add_argument("--batch-size", type=int, default=8, help="segments decoded together")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    add_weights_option(parser, "Whisper's linear layers in this weight format (auto: as loaded)")
    parser.add_argument("--resume", action="store_true",
                        help="keep finished rows of --output and process only the rest")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "vad", "fixed"],
                        help="long-audio segmentation: Silero VAD or fixed ≤30 s cuts at quiet points")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no printed results")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print each segment ([start --> end] text) as soon as it is decoded")


def register(parser: argparse.ArgumentParser) -> None:
    from speechllm.apps.commands.whisper_options import add_cue_options, add_whisper_options

    parser.add_argument("inputs", nargs="+", metavar="AUDIO",
                        help="audio files, folders (recursive), globs or manifests (.jsonl)")
    add_model_options(parser)
    add_whisper_options(parser)
    add_cue_options(parser)
    parser.add_argument("--format", action="append", default=[], choices=FORMAT_NAMES,
                        help="also write <audio stem>.FORMAT per input (repeatable)")
    parser.add_argument("--format-dir", type=Path,
                        help="folder for --format files (default: beside --output)")
    parser.add_argument("--shard", metavar="I/N", help="only every N-th input starting at I (0-based)")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on a Ray cluster (ADDRESS, e.g. auto or ray://host:10001; "
                             "no ADDRESS: a local Ray instance)")
    parser.add_argument("--ray-workers", type=int, default=1, help="Ray actors, each holding one model")
    parser.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                        help="GPUs per Ray actor, fractions share one (e.g. 0.25: four actors a GPU); "
                             "default: the cluster's GPUs shared among the actors, none on a CPU cluster")


def run_task(args: argparse.Namespace, inputs: list[str], task: str = "transcribe", **task_options) -> int:
    """Run one speech task over ``inputs`` as a batch job; exit code 1 when an input failed.

    Everything that can be checked without the model is checked first (options, output paths,
    the device, the model folder's files, every input's audio header), so a bad argument fails in
    a second; inputs that cannot be used become error rows, and when no input is left to do the
    model is never loaded.
    """
    import speechllm
    from speechllm.apps.batch import expand_inputs, precheck, run_batch, shard
    from speechllm.apps.commands import preflight
    from speechllm.apps.commands.whisper_options import cue_options, whisper_options

    if args.resume and not args.output:
        raise ValueError("--resume needs --output")
    if args.batch_size < 1 or args.beam_size < 1:
        raise ValueError("--batch-size and --beam-size must be at least 1")
    if args.output:
        preflight.check_output_file(args.output)
    formats = tuple(getattr(args, "format", ()))
    format_dir = getattr(args, "format_dir", None)
    if formats and format_dir is not None:
        preflight.check_output_dir(format_dir, "--format-dir")
    preflight.check_device(args.device)
    model = args.model or speechllm.default_model(task)
    on_ray = bool(getattr(args, "ray", None))
    whisper_translates = task == "translate" and speechllm.multilingual_whisper(model)
    if not on_ray:  # a Ray cluster's workers resolve the model on their own machines
        preflight.check_model(model, needs_speechlm=task != "transcribe" and not whisper_translates,
                              task=task)
    is_speechlm = preflight.is_speechlm(model)
    cues = cue_options(args)
    if args.quant != "auto" and is_speechlm:
        raise ValueError("--quant is for Whisper models: a speech-LLM runs its LLM in the format its "
                         "config.json names")
    files = shard(expand_inputs(inputs, uris=on_ray), getattr(args, "shard", None))
    if not files:
        raise ValueError(f"--shard {args.shard}: no inputs fall in this shard")
    files = precheck(files)
    options = dict(device=args.device, beam_size=args.beam_size, batch_size=args.batch_size,
                   segmenter=args.segmenter)
    if task != "transcribe":
        options.update(task=task, **task_options)
    if args.quant in ("int8", "int4"):  # auto and fp32: the float weights Whisper loads with
        options["quant"] = args.quant
    options.update(whisper_options(args, is_speechlm))

    def load():
        if on_ray:
            from speechllm.apps.ray_backend import RayTranscriber

            return RayTranscriber(args.ray, workers=args.ray_workers, gpus=args.ray_gpus, model=args.model,
                                  **options)
        with preflight.quiet_libraries(args.quiet and is_speechlm), preflight.naming_model(model):
            return speechllm.load(model, **options)

    summary = run_batch(load, files, args.output, resume=args.resume,
                        progress=not args.quiet, echo=not args.quiet,
                        verbose=getattr(args, "verbose", False) and not args.quiet,
                        formats=formats, format_dir=format_dir, cues=cues)
    if (summary.failed or summary.skipped) and len(files) > 1:
        done = "transcribed" if task == "transcribe" else "done"
        print(f"{summary.done} {done}, {summary.failed} failed, {summary.skipped} already done",
              file=sys.stderr)
    return 1 if summary.failed else 0


def run(args: argparse.Namespace) -> int:
    return run_task(args, args.inputs)
