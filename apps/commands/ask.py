"""``speechllm ask AUDIO [QUESTION]``: answer the question spoken in AUDIO, or QUESTION about it."""

from __future__ import annotations

import argparse

from speechllm.apps.commands.transcribe import add_model_options, run_task

HELP = "answer a spoken question, or a text question about a recording, with the speech-LLM"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", metavar="AUDIO", help="the recording")
    parser.add_argument("question", nargs="?", metavar="QUESTION",
                        help="a text question about the recording (default: answer the question it asks)")
    parser.add_argument("--free-answer", action="store_true",
                        help="let the LLM word its answer to QUESTION freely (default: it quotes what it "
                             "heard, or says the recording does not say)")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from speechllm.limits import check_prompt

    if args.question is not None:  # empty or over MAX_PROMPT_CHARS: fails before anything loads
        return run_task(args, [args.audio], "passage-question", prompt=check_prompt(args.question),
                        quote_answers=not args.free_answer)
    if args.free_answer:
        raise ValueError("--free-answer goes with a QUESTION about the recording")
    return run_task(args, [args.audio], "spoken-question")
