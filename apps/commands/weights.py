"""One spelling of weight formats on every command line: ``--quant auto|fp32|int8|int4``.

``auto`` is the format the model was saved in (or the command's own choice where it has one),
``fp32`` float weights, ``int8``/``int4`` the low-bit formats of :mod:`speechllm.quant`. The older
spellings still work, each with a one-line notice on stderr: ``--lm-quant`` (``tts``) for ``--quant``,
``saved`` for ``auto`` and ``none`` for ``fp32``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

WEIGHT_FORMATS = ("auto", "fp32", "int8", "int4")
OLD_VALUES = {"saved": "auto", "none": "fp32"}
FLAG = "--quant"


class _WeightFormat(argparse.Action):
    """Stores the canonical value; an old flag or value is accepted with a notice naming the new one."""

    def __call__(self, parser, namespace, value, option_string=None):
        canonical = OLD_VALUES.get(value, value)
        if canonical not in self.formats:
            parser.error(f"argument {option_string}: invalid choice {value!r} "
                         f"(choose from {', '.join(self.formats)})")
        if option_string != FLAG or value != canonical:
            print(f"note: {option_string} {value} is deprecated; use {FLAG} {canonical}", file=sys.stderr)
        setattr(namespace, self.dest, canonical)


def add_weights_option(parser: argparse.ArgumentParser, help: str,
                       formats: Sequence[str] = WEIGHT_FORMATS, old_flags: Sequence[str] = ()) -> None:
    """``--quant`` (and any ``old_flags``) with ``formats``, default ``auto``; ``args.quant`` is
    always one of ``formats``."""
    action = type("WeightFormat", (_WeightFormat,), {"formats": tuple(formats)})
    parser.add_argument(FLAG, dest="quant", default="auto", action=action,
                        metavar="{" + ",".join(formats) + "}", help=f"{help}; default auto")
    for flag in old_flags:
        parser.add_argument(flag, dest="quant", action=action, help=argparse.SUPPRESS)
