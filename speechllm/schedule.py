"""The learning-rate schedule every trainer here uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): ``lr * (step+1)/warmup`` while warming up, then a cosine
    from ``lr`` down to ``floor * lr`` at ``steps`` (and flat after it)."""
    warmup = max(warmup, 1)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return lr * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
