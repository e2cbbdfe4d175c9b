"""A disk cache of the frozen speech encoder's output, for training runs that repeat epochs.

With the encoder frozen (the default) its output for a clip never changes, yet it costs as
much as a small adapter's whole training step on a CPU. The first epoch stores each clip's
frames (fp16 safetensors, one file per clip, written atomically); later epochs and other
adapters trained on the same encoder and data read them back. Keys cover the audio file's
path, size and modification time and the encoder's name, so a changed file or another encoder
never reads stale frames. Not for augmented training (each draw differs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from speechllm.speechlm.io import atomic_save_tensors


class EncoderCache:
    def __init__(self, folder: str | Path, encoder_name: str):
        self.folder = Path(folder)
        self.encoder_name = encoder_name
        self.hits = self.misses = 0

    def path_for(self, audio_path: str) -> Path:
        stat = os.stat(audio_path)
        key = f"{os.path.abspath(audio_path)}|{stat.st_size}|{stat.st_mtime_ns}|{self.encoder_name}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def frames(self, model, paths: Sequence[str], audio: Tensor,
               lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's (hidden [B, F, D], mask [B, F]) of a padded batch; computes only what is missing."""
        files = [self.path_for(p) for p in paths]
        found: dict[int, Tensor] = {}
        for i, file in enumerate(files):
            if file.exists():
                try:
                    found[i] = load_file(file)["hidden"]
                except Exception:  # a damaged entry is recomputed
                    file.unlink(missing_ok=True)
        missing = [i for i in range(len(paths)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            rows = torch.tensor(missing)
            width = int(lengths[rows].max())
            hidden, mask = model.encode_frames(audio[rows, :width], lengths[rows])
            for j, i in enumerate(missing):
                item = hidden[j, : int(mask[j].sum())].to(torch.float16).cpu().contiguous()
                files[i].parent.mkdir(parents=True, exist_ok=True)
                atomic_save_tensors({"hidden": item}, files[i])
                found[i] = item
        device = model.device
        items = [found[i].to(device=device, dtype=torch.float32) for i in range(len(paths))]
        size = max(len(x) for x in items)
        hidden = torch.zeros(len(items), size, items[0].shape[1], device=device)
        mask = torch.zeros(len(items), size, dtype=torch.bool, device=device)
        for i, x in enumerate(items):
            hidden[i, : len(x)] = x
            mask[i, : len(x)] = True
        return hidden, mask
