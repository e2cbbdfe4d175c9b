"""The trainer's data: manifests checked up front, text rows, the dataset and its batches.

* :func:`check_manifests` reports every bad row of every manifest (bad JSON, missing fields,
  unreadable or empty audio, clips longer than the encoder takes, tasks nothing trains on),
  ``FILE:LINE: reason``, in one error, before a model is loaded; :func:`read_text_rows` does the
  same for text rows (no audio: their spoken text is known).
* :class:`SpeechDataset` loads (and, training, augments) audio; :class:`BatchOrder` is an endless,
  seeded, resumable order of micro-batches, sharded by rank; :class:`TextMix` says which
  micro-batches are text.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speechllm.manifest import ManifestError, ManifestRow, validate_manifest
from speechllm.speechlm.model import pad_audio
from speechllm.speechlm.tasks import Example, example_of, row_tasks


def read_text_rows(path: str | Path) -> list[ManifestRow]:
    """Text rows for text-side training: manifest rows without audio, whose spoken text is known
    (``asr``/``tts``: text; ``st``: extra ``source_text``; ``sqa``: text with an answer; ``instruct``:
    extra ``transcript``). Every bad row is reported (``FILE:LINE: reason``) in one ManifestError."""
    rows, errors = [], []
    keys = ("text", "prompt", "answer", "lang")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{n}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict) or obj.get("task") not in row_tasks():
                task = obj.get("task") if isinstance(obj, dict) else None
                errors.append(f"{path}:{n}: task {task!r} is not one of {', '.join(row_tasks())}")
                continue
            if any(obj.get(k) is not None and not isinstance(obj[k], str) for k in keys):
                errors.append(f"{path}:{n}: {', '.join(keys)} must be strings")
                continue
            extra = {k: v for k, v in obj.items() if k not in keys and k not in ("task", "audio")}
            row = ManifestRow(audio="", task=obj["task"], extra=extra, **{k: obj.get(k) for k in keys})
            example = example_of(row)
            if not (example.spoken or "").strip() or not example.reply:
                errors.append(f"{path}:{n}: a text row needs its spoken text and a reply")
                continue
            rows.append(row)
    if not rows and not errors:
        errors.append(f"{path}: no rows")
    if errors:
        raise ManifestError(str(path), errors)
    return rows


@dataclass(frozen=True)
class TextMix:
    """Which micro-batches come from the text rows: each one independently with probability
    ``share``, seeded, so that any micro-batch's source (and the count of speech batches before it,
    where a resumed run's speech order starts) can be computed."""

    share: float
    seed: int

    def is_text(self, m: int) -> bool:
        if self.share <= 0 or self.share >= 1:
            return self.share >= 1
        return random.Random(self.seed * 1_000_003 + m).random() < self.share

    def speech_before(self, m: int) -> int:
        return sum(not self.is_text(i) for i in range(m))


def check_manifests(paths: Sequence[str | Path], max_seconds: float | None) -> list[list[ManifestRow]]:
    """Rows of each manifest, or one ManifestError listing every bad row of all of them."""
    all_rows, errors = [], []
    for path in paths:
        rows, problems = validate_manifest(path, check_audio=True)
        where = re.compile(rf"{re.escape(str(path))}:(\d+):")
        bad_lines = {int(m.group(1)) for p in problems if (m := where.match(p))}
        with open(path, "rb") as f:
            good_lines = [n for n, line in enumerate(f, 1) if line.strip() and n not in bad_lines]
        for line, row in zip(good_lines, rows, strict=True):
            if max_seconds is not None and row.duration is not None and row.duration > max_seconds:
                problems.append(f"{path}:{line}: audio {row.audio} is {row.duration:.1f} s, over the "
                                f"encoder's {max_seconds:g} s (cut it with speechllm.segment first)")
            elif row.task not in row_tasks():
                problems.append(f"{path}:{line}: task {row.task!r} is not trained here")
        if not rows and not problems:
            problems.append(f"{path}: no rows")
        errors += sorted(problems, key=lambda p: int(m.group(1)) if (m := re.search(r":(\d+):", p)) else 0)
        all_rows.append(rows)
    if errors:
        raise ManifestError(", ".join(map(str, paths)), errors)
    return all_rows


def augment_config(options: dict[str, Any] | None):
    """``AugmentConfig`` from a dict of its fields (lists become the (low, high) tuples), or None."""
    if options is None:
        return None
    from speechllm.augment import AugmentConfig

    known = set(AugmentConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"augmentation has no option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


class SpeechDataset(Dataset):
    """Rows → (16 kHz audio, example); with ``augment`` (training only), each draw of an item is
    perturbed afresh (speed, noise, gain, reverb), seeded by (seed, item, draw)."""

    def __init__(self, rows: Sequence[ManifestRow], augment=None, seed: int = 0):
        self.rows = list(rows)
        self.augment = augment
        self.seed = seed
        self.draws = [0] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Example, str]:
        from speechllm.audio import load_audio

        row = self.rows[index]
        audio = load_audio(row.audio)
        if self.augment is not None:
            from speechllm.augment import augment

            self.draws[index] += 1
            rng = np.random.default_rng([self.seed, index, self.draws[index]])
            audio = augment(audio, rng, self.augment)
        return audio, example_of(row), row.audio


def collate(items: list[tuple[np.ndarray, Example, str]]) -> dict[str, Any]:
    audio, lengths = pad_audio([item[0] for item in items])
    return {"audio": audio, "lengths": lengths, "examples": [item[1] for item in items],
            "paths": [item[2] for item in items]}


class BatchOrder(Sampler):
    """Micro-batch m of an endless, seeded shuffle; any m can be computed, so a resumed run
    picks up exactly where it stopped. Each rank takes every world-th index of the epoch."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        self.n, self.batch_size, self.seed, self.start, self.rank, self.world = (
            n_rows, batch_size, seed, start, rank, world)
        self.per_rank = math.ceil(n_rows / world)
        self.per_epoch = math.ceil(self.per_rank / batch_size)

    def batch(self, m: int) -> list[int]:
        epoch, i = divmod(m, self.per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        order = (order * (self.per_rank * self.world // self.n + 1))[: self.per_rank * self.world]
        mine = order[self.rank :: self.world]
        return mine[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            yield self.batch(m)
            m += 1


def eval_subset(rows: Sequence[ManifestRow], max_rows: int, seed: int) -> list[ManifestRow]:
    """At most ``max_rows``: a fixed, seeded subset across the whole file (all tasks), in file order."""
    if len(rows) <= max_rows:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]
