"""The ``speechllm`` console script: one entry point, subcommands from a registry.

Each subcommand is a module in ``speechllm.apps.commands`` with ``HELP`` (one line),
``register(parser)`` and ``run(args) -> int``. Modules are imported only when needed so that
``speechllm --help`` stays fast; heavy imports (torch) live inside ``run``.

Every failure ends in one line per problem, ``speechllm CMD: error: ...``, naming the input and
the reason, never a traceback; ``--debug`` (before or after the subcommand) re-raises instead.
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
    "tts-train": "speechllm.apps.commands.tts_train",
    "quantize": "speechllm.apps.commands.quantize",
    "chat": "speechllm.apps.commands.chat",
    "serve": "speechllm.apps.commands.serve",
}

REPORT_TO = "the speechllm issue tracker"  # no public address yet; put its URL here when there is one
DEBUG_HELP = "show the full traceback of an error (for bug reports)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand is listed; its options are registered for all of them, or (``only``) for the
    one being run: some commands' options come from modules that import torch and the TTS stack, and a
    cold ``speechllm ask`` should not pay for ``data synth``'s options."""
    parser = argparse.ArgumentParser(
        prog="speechllm", description="Speech applications on one small quantized LLM."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if only is None or name == only:
            module.register(sub_parser)
            sub_parser.set_defaults(_run=module.run)
            _accept_debug(sub_parser)
    return parser


def command_in(argv: list[str]) -> str | None:
    """The subcommand an argument list runs (the first word that names one), or None."""
    return next((word for word in argv if word in COMMANDS), None)


def _accept_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too (and after a nested action such as ``data validate``).
    SUPPRESS: a subcommand without the flag leaves the top-level value alone."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _accept_debug(nested)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can act on (bad input, missing or corrupt model files, no GPU, full disk):
    printed as they are. safetensors' own error class names a corrupt weights file."""
    kinds: list[type[BaseException]] = [ValueError, OSError, RuntimeError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:
        pass
    return tuple(kinds)


def describe(exc: BaseException) -> list[str]:
    """An expected error as one or more lines, each a whole message (a list of bad manifest rows
    gives one line per row)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # not "[Errno 21] Is a directory: 'x'"
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return [f"{where}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"]
    errors = getattr(exc, "errors", None)  # speechllm.manifest.ManifestError
    if isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        return [line for e in errors for line in e.splitlines() if line.strip()]
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ == "SafetensorError":
        text = f"corrupt safetensors weights ({text})"
    return [line for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=command_in(argv) or "")  # "": no command, no options to register
    args = parser.parse_args(argv)
    if args.version:
        from speechllm import __version__

        print(__version__)
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    prefix = f"speechllm {args.command}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, expected_errors()):
            for line in describe(exc):
                print(f"{prefix}: error: {line}", file=sys.stderr)
        else:
            print(f"{prefix}: unexpected error ({type(exc).__name__}: {_first_line(exc)}); this is a bug: "
                  f"please report it with the command line to {REPORT_TO}; --debug shows the traceback",
                  file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"


if __name__ == "__main__":
    sys.exit(main())
