"""``linear``: stack k consecutive frames and project with a 2-layer MLP (SLAM-ASR).

Whisper's 50 frames/s become 50/k vectors/s (k = 5: 10/s). The last, partial group of an
item is completed with zeros, as it would be if the item were alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from speechllm.adapters.base import Adapter, AdapterOutput, lengths_to_mask, mlp


@dataclass(frozen=True)
class LinearConfig:
    encoder_dim: int
    llm_dim: int
    stack: int = 5  # frames per output vector
    hidden_dim: int = 1024


class LinearAdapter(Adapter):
    Config = LinearConfig

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        self.proj = mlp(config.stack * config.encoder_dim, config.hidden_dim, config.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        k = self.config.stack
        batch, frames, dim = hidden.shape
        x = F.pad(hidden * mask[..., None], (0, 0, 0, (-frames) % k))
        x = x.reshape(batch, -1, k * dim)
        out_mask = lengths_to_mask((mask.sum(1) + k - 1) // k, x.shape[1])
        return AdapterOutput(self.proj(x) * out_mask[..., None], out_mask)
