"""The ``speechllm`` console script: one entry point, subcommands from a registry.

Each subcommand is a module in ``speechllm.apps.commands`` with ``HELP`` (one line),
``register(parser)`` and ``run(args) -> int``. Modules are imported only when needed so that
``speechllm --help`` stays fast; heavy imports (torch) live inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "models": "speechllm.apps.commands.models",
    "transcribe": "speechllm.apps.commands.transcribe",
    "translate": "speechllm.apps.commands.translate",
    "ask": "speechllm.apps.commands.ask",
    "data": "speechllm.apps.commands.data",
    "finetune": "speechllm.apps.commands.finetune",
    "tts": "speechllm.apps.commands.tts",
    "quantize": "speechllm.apps.commands.quantize",
    "chat": "speechllm.apps.commands.chat",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechllm", description="Speech applications on one small quantized LLM."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.register(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from speechllm import __version__

        print(__version__)
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # Expected user-facing failures (missing model, bad manifest, bad audio): one line.
        print(f"speechllm {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
