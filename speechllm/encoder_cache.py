"""A disk cache of the frozen speech encoder's output, for training runs that repeat epochs.

With the encoder frozen (the default) its output for a clip never changes, yet it costs as
much as a small adapter's whole training step on a CPU. The first epoch stores each clip's
frames (fp16 safetensors, one file per clip, written atomically); later epochs and other
adapters trained on the same encoder and data read them back. Keys cover the audio file's
path, size and modification time and the encoder's name, so a changed file or another encoder
never reads stale frames. Not for augmented training (each draw differs).

``python -m speechllm.encoder_cache --cache DIR MANIFEST...`` fills the cache ahead of training
(for instance on a spare core while another run trains): training then starts at cached speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from speechllm.files import atomic_save_tensors
from speechllm.zoo import DEFAULT_ENCODER


class EncoderCache:
    """``skip_top``: the encoder's top blocks fine-tuned in training; the cache then holds the frozen
    blocks' output below them (keyed apart from the whole encoder's)."""

    def __init__(self, folder: str | Path, encoder_name: str, skip_top: int = 0):
        self.folder = Path(folder)
        self.encoder_name = encoder_name
        self.skip_top = skip_top
        self.hits = self.misses = 0

    def path_for(self, audio_path: str) -> Path:
        stat = os.stat(audio_path)
        key = f"{os.path.abspath(audio_path)}|{stat.st_size}|{stat.st_mtime_ns}|{self.encoder_name}"
        if self.skip_top:
            key += f"|below the top {self.skip_top}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def frames(self, encoder, paths: Sequence[str], audio: Tensor, lengths: Tensor,
               device: torch.device) -> tuple[Tensor, Tensor]:
        """``encoder.frames`` (hidden [B, F, D], mask [B, F]) of a padded batch, on ``device``; computes
        only what is missing."""
        if encoder.trainable_layers != self.skip_top:
            raise ValueError(f"this cache holds the output below the top {self.skip_top} encoder layers, but "
                             f"{encoder.trainable_layers} train")
        files = [self.path_for(p) for p in paths]
        found: dict[int, Tensor] = {}
        for i, file in enumerate(files):
            if file.exists():
                try:
                    hidden = load_file(file)["hidden"]
                except Exception:  # a damaged entry is recomputed
                    file.unlink(missing_ok=True)
                    continue
                if hidden.shape[-1] == encoder.dim:  # else another encoder's features: recomputed
                    found[i] = hidden
        missing = [i for i in range(len(paths)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            rows = torch.tensor(missing)
            width = int(lengths[rows].max())
            hidden, mask = encoder.frames(audio[rows, :width], lengths[rows], device)
            for j, i in enumerate(missing):
                item = hidden[j, : int(mask[j].sum())].to(torch.float16).cpu().contiguous()
                files[i].parent.mkdir(parents=True, exist_ok=True)
                atomic_save_tensors({"hidden": item}, files[i])
                found[i] = item
        items = [found[i].to(device=device, dtype=torch.float32) for i in range(len(paths))]
        size = max(len(x) for x in items)
        hidden = torch.zeros(len(items), size, items[0].shape[1], device=device)
        mask = torch.zeros(len(items), size, dtype=torch.bool, device=device)
        for i, x in enumerate(items):
            hidden[i, : len(x)] = x
            mask[i, : len(x)] = True
        return hidden, mask


def fill(cache: EncoderCache, paths: Sequence[str], encoder_kind: str = "whisper", batch_size: int = 16,
         progress: bool = True) -> tuple[int, list[str]]:
    """Encode every file of ``paths`` not yet cached; → (files encoded, one-line errors)."""
    from tqdm import tqdm

    from speechllm.audio import load_audio
    from speechllm.speechlm.backbone import load_encoder
    from speechllm.speechlm.model import pad_audio

    todo = sorted({p for p in paths if not cache.path_for(p).exists()}, key=lambda p: os.stat(p).st_size)
    if not todo:
        return 0, []
    encoder = load_encoder(cache.encoder_name, encoder_kind).set_trainable_layers(cache.skip_top)
    device = next(encoder.parameters()).device
    errors: list[str] = []
    done = 0
    with tqdm(total=len(todo), unit="file", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(todo), batch_size):
            batch, clips = [], []
            for path in todo[start:start + batch_size]:
                try:
                    clips.append(load_audio(path))
                    batch.append(path)
                except Exception as error:  # recorded, the rest goes on
                    errors.append(f"{path}: {error}")
            if batch:
                audio, lengths = pad_audio(clips)
                cache.frames(encoder, batch, audio, lengths, device)
                done += len(batch)
            bar.update(len(todo[start:start + batch_size]))
    return done, errors


def main(argv: Sequence[str] | None = None) -> int:
    from speechllm.manifest import read_manifest

    parser = argparse.ArgumentParser(prog="python -m speechllm.encoder_cache",
                                     description="fill a training run's encoder cache ahead of time")
    parser.add_argument("manifests", nargs="+", help="training manifests (jsonl)")
    parser.add_argument("--cache", required=True, help="the folder given to finetune --encoder-cache")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--encoder-kind", default="whisper")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-encoder-layers", type=int, default=0,
                        help="as given to finetune: cache the output below that many top layers")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [row.audio for manifest in args.manifests for row in read_manifest(manifest)]
    cache = EncoderCache(args.cache, args.encoder, args.train_encoder_layers)
    done, errors = fill(cache, paths, args.encoder_kind, args.batch_size)
    for error in errors:
        print(error, file=sys.stderr)
    cached = len(set(paths)) - done - len(errors)
    print(f"{done} files encoded, {len(errors)} failed, {cached} already cached")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
