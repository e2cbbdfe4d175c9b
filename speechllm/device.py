"""The one device picker: ``auto`` (or None) is the first GPU when torch sees one, else the CPU;
anything else is checked up front, so ``--device cuda`` on a CPU-only machine fails in one line
before any model loads, not in the middle of loading one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"


def check_device(device: str | None, flag: str = "--device") -> None:
    """``auto``, or a device this torch can use; ``ValueError`` (one line, naming ``flag``) if not."""
    if device in (None, AUTO):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        shown = device if len(device) <= 40 else device[:40] + f"... ({len(device):,} characters)"
        raise ValueError(f"{flag} {shown}: not a device (cpu, cuda, cuda:1, mps, auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"{flag} {device}: CUDA is not available ({why}; torch {torch.__version__}); "
                             "use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{flag} {device}: there is no such GPU ({count} visible: "
                             f"cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {device}: Apple MPS is not available here; use --device cpu or auto")
    elif dev.type != "cpu":
        raise ValueError(f"{flag} {device}: unsupported device type {dev.type!r} (cpu, cuda, mps, auto)")


def pick_device(device: str | None = None, index: int | None = None) -> torch.device:
    """The ``torch.device`` to run on: ``device`` as given, or for ``auto``/None the GPU (``cuda:index``
    with an index, e.g. a distributed worker's local rank) when one is visible, else the CPU."""
    import torch

    if device not in (None, AUTO):
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if index is None else f"cuda:{index}")
