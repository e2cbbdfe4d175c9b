"""Training checkpoints, the same for every trainer (``speechllm.train``, ``speechllm.tts.train``).

``OUT/checkpoints/step-NNNNNNN/`` holds what the trainer's ``write_model`` puts there (a
speech-LLM model folder, a TTS stage's weights), ``optimizer.safetensors`` (the optimizer's
tensors, nothing pickled) and ``trainer_state.json`` (step, the optimizer's param groups and
whatever the trainer adds). A checkpoint is written under a hidden name, fsynced and renamed into
place only once whole; older ones beyond ``keep`` are renamed away before they are deleted, so a
crash never leaves a half-written or half-deleted folder under a checkpoint's name. Resuming takes
the newest intact checkpoint and skips each newer, damaged one with a one-line warning.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from speechllm.files import (
    atomic_save_tensors,
    atomic_write_text,
    check_safetensors,
    load_tensors,
    read_json,
    replace_folder,
)

CHECKPOINTS, STATE_FILE, OPTIMIZER_FILE = "checkpoints", "trainer_state.json", "optimizer.safetensors"
PREFIX = "step-"

ModelCheck = Callable[[Path], Any]  # raises ValueError / OSError naming the damaged or missing file


def save_checkpoint(out: Path, step: int, optimizer: torch.optim.Optimizer,
                    write_model: Callable[[Path], Any], state: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """``OUT/checkpoints/step-N``: ``write_model(folder)``, the optimizer and the trainer state,
    renamed into place whole; then only the newest ``keep`` checkpoints are left."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{PREFIX}*"):  # unfinished, or on its way out, when a run was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"{PREFIX}{step:07d}"
    tmp = root / f".{name}.tmp"
    tmp.mkdir()
    write_model(tmp)
    saved = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in saved["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    atomic_save_tensors(tensors, tmp / OPTIMIZER_FILE)
    atomic_write_text(tmp / STATE_FILE, json.dumps(
        {**(state or {}), "step": step, "param_groups": saved["param_groups"]}, indent=2))
    replace_folder(tmp, root / name)
    for old in checkpoint_folders(out)[:-keep]:
        gone = root / f".{old.name}.old"
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(old, gone)  # never a half-deleted folder under a checkpoint's name
        shutil.rmtree(gone, ignore_errors=True)
    return root / name


def checkpoint_folders(out: Path) -> list[Path]:
    """``step-N`` folders under ``OUT/checkpoints``, oldest first."""
    root = Path(out) / CHECKPOINTS
    found = [(int(p.name[len(PREFIX):]), p) for p in root.glob(f"{PREFIX}*")
             if p.name[len(PREFIX):].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_problem(folder: Path, check_model: ModelCheck) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, cut short or garbled), or None when
    every file it needs is there and readable; cheap: headers and sizes, no tensor is read."""
    try:
        state = read_json(folder / STATE_FILE)
        if not isinstance(state.get("step"), int) or not isinstance(state.get("param_groups"), list):
            return f"{folder / STATE_FILE}: no step or param_groups"
        check_model(folder)
        check_safetensors(folder / OPTIMIZER_FILE)
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror.lower()}" if exc.filename and exc.strerror else str(exc)
    except ValueError as exc:  # a corrupt file, named
        return str(exc)
    return None


def latest_checkpoint(out: Path, check_model: ModelCheck) -> Path | None:
    """The newest intact checkpoint; each newer, damaged one is skipped with a one-line warning."""
    for folder in reversed(checkpoint_folders(out)):
        problem = checkpoint_problem(folder, check_model)
        if problem is None:
            return folder
        print(f"warning: skipping damaged checkpoint {folder.name}: {problem}", file=sys.stderr)
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, folder: Path) -> int:
    """Restore the optimizer saved in ``folder``; returns the checkpoint's step."""
    saved = read_json(folder / STATE_FILE)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in load_tensors(folder / OPTIMIZER_FILE).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return int(saved["step"])
