"""``window-qformer``: a few learned queries per fixed-length window (Granite-speech's projector).

The frames are cut into windows of ``window`` frames; the same ``queries_per_window`` queries
read each window alone (with a learned in-window position added to the frames), so the output
rate is fixed: 50 frames/s, window 15, 3 queries → 10 vectors/s. Windows made only of padding
are skipped; the last, partial window of an item attends to its valid frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput
from speechllm.adapters.qformer import QFormer


@dataclass(frozen=True)
class WindowQFormerConfig:
    encoder_dim: int
    llm_dim: int
    window: int = 15
    queries_per_window: int = 3
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2
    d_ffn: int = 1024


class WindowQFormerAdapter(Adapter):
    Config = WindowQFormerConfig

    def __init__(self, config: WindowQFormerConfig):
        super().__init__(config)
        c = config
        self.position = nn.Parameter(torch.zeros(c.window, c.encoder_dim))
        self.qformer = QFormer(c.queries_per_window, c.encoder_dim, c.d_model, c.n_heads, c.n_layers, c.d_ffn)
        self.proj = nn.Linear(c.d_model, c.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        w, q = self.config.window, self.config.queries_per_window
        batch, frames, dim = hidden.shape
        pad = (-frames) % w
        windows = F.pad(hidden, (0, 0, 0, pad)).reshape(-1, w, dim) + self.position
        window_mask = F.pad(mask, (0, pad)).reshape(-1, w)
        used = window_mask.any(dim=1)  # [B * W]
        out = hidden.new_zeros(used.shape[0], q, self.config.llm_dim)
        out[used] = self.proj(self.qformer(windows[used], window_mask[used]))
        out_mask = used.reshape(batch, -1).repeat_interleave(q, dim=1)
        return AdapterOutput(out.reshape(batch, -1, self.config.llm_dim), out_mask)
