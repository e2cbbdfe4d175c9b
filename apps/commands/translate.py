"""``speechllm translate AUDIO... --to en``: speech translation with the speech-LLM."""

from __future__ import annotations

import argparse

from speechllm.apps.commands.transcribe import add_model_options, run_task

HELP = ("translate speech into another language (default English) with the speech-LLM, or into English "
        "with a multilingual Whisper (--model whisper-base)")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files, folders or globs")
    from speechllm.apps.commands.whisper_options import add_whisper_options

    parser.add_argument("--to", default="en", metavar="LANG", help="target language, code or name (en)")
    add_model_options(parser)
    add_whisper_options(parser, translating=True)


def run(args: argparse.Namespace) -> int:
    from speechllm.apps.commands.preflight import check_language

    return run_task(args, args.inputs, "translate", target=check_language(args.to))
