"""``speechllm tts-train STAGE --cache DIR --out DIR ...``: train the TTS stages one at a time.

The same stages, steps and options as ``python -m speechllm.tts.train --stage STAGE ...`` (see
``speechllm.tts.train``): ``cache`` (a corpus → features), ``tokenizer``, ``tokens``, ``vocoder``,
``flow``, ``lm``, ``pack``, and ``assemble`` (the trained stages → a voice folder that ``speechllm
tts --voice`` takes). Every folder is named on the command line; rerunning a training stage goes on
from its newest intact checkpoint.
"""

from __future__ import annotations

import argparse

HELP = "train the TTS stages one at a time (cache, tokenizer, tokens, vocoder, flow, lm, pack, assemble)"


def register(parser: argparse.ArgumentParser) -> None:
    # the options live with the trainer (speechllm.tts.train), which imports torch: they are parsed
    # there, so that building this parser (speechllm --help) stays fast
    parser.add_argument("stage", metavar="STAGE",
                        help="a step (cache, tokens, pack, assemble) or a training stage (tokenizer, "
                             "vocoder, flow, lm)")
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="the stage's options (--cache, --out, --steps, ...): see "
                             "speechllm tts-train STAGE --help")


def run(args: argparse.Namespace) -> int:
    from speechllm.tts.train import build_parser, run_args

    options = list(args.options)
    if "--debug" in options:  # the console script's own flag, after the stage's options
        options.remove("--debug")
        args.debug = True
    parser = build_parser("speechllm tts-train", stage_flag=False)
    return run_args(parser.parse_args([args.stage, *options]))
