"""``conv``: strided 1-D convolutions downsample the frames, then a linear projection.

Each layer halves the frame rate (kernel 3, stride 2, padding 1: length L → ceil(L / 2)); two
layers turn 50 frames/s into 12.5 vectors/s. Frames past each item's length are zeroed
before every layer, so the convolutions see what they would see on the item alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, lengths_to_mask


@dataclass(frozen=True)
class ConvConfig:
    encoder_dim: int
    llm_dim: int
    n_layers: int = 2  # downsampling = 2 ** n_layers
    channels: int = 512


class ConvAdapter(Adapter):
    Config = ConvConfig

    def __init__(self, config: ConvConfig):
        super().__init__(config)
        dims = [config.encoder_dim] + [config.channels] * config.n_layers
        self.convs = nn.ModuleList(nn.Conv1d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1)
                                   for i in range(config.n_layers))
        self.proj = nn.Linear(dims[-1], config.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        x, lengths = hidden.transpose(1, 2), mask.sum(1)
        for conv in self.convs:
            x = x * lengths_to_mask(lengths, x.shape[-1])[:, None, :]
            x = F.gelu(conv(x))
            lengths = (lengths + 1) // 2
        out_mask = lengths_to_mask(lengths, x.shape[-1])
        return AdapterOutput(self.proj(x.transpose(1, 2)) * out_mask[..., None], out_mask)
