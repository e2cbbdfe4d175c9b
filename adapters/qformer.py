"""``qformer``: a fixed set of learned queries cross-attends to the whole utterance (BLIP-2, SALMONN).

Every utterance, short or long, becomes ``num_queries`` vectors. :class:`QFormer` (queries →
self-attention → cross-attention to masked memory → MLP, repeated) is shared with the windowed
adapters (``window-qformer``, ``alignformer``), which run it on one window at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, Attention, mlp


@dataclass(frozen=True)
class QFormerConfig:
    encoder_dim: int
    llm_dim: int
    num_queries: int = 32
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2
    d_ffn: int = 1024


class QFormerLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ffn: int):
        super().__init__()
        self.self_ln, self.self_attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.cross_ln, self.cross_attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.mlp_ln, self.mlp = nn.LayerNorm(d_model), mlp(d_model, d_ffn, d_model)

    def forward(self, q: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        h = self.self_ln(q)
        q = q + self.self_attn(h, h)
        q = q + self.cross_attn(self.cross_ln(q), memory, memory_mask[:, None, None, :])
        return q + self.mlp(self.mlp_ln(q))


class QFormer(nn.Module):
    """``queries`` [Q, d] (learned) read ``memory`` [B, T, d_memory] where ``mask`` [B, T] is True."""

    def __init__(self, num_queries: int, d_memory: int, d_model: int, n_heads: int, n_layers: int,
                 d_ffn: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, d_model) * 0.02)
        self.memory_ln = nn.LayerNorm(d_memory)
        self.memory_proj = nn.Linear(d_memory, d_model)
        self.layers = nn.ModuleList(QFormerLayer(d_model, n_heads, d_ffn) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, memory: Tensor, mask: Tensor) -> Tensor:
        memory = self.memory_proj(self.memory_ln(memory))
        q = self.queries.expand(memory.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, memory, mask)
        return self.ln(q)


class QFormerAdapter(Adapter):
    Config = QFormerConfig

    def __init__(self, config: QFormerConfig):
        super().__init__(config)
        c = config
        self.qformer = QFormer(c.num_queries, c.encoder_dim, c.d_model, c.n_heads, c.n_layers, c.d_ffn)
        self.proj = nn.Linear(c.d_model, c.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        out = self.proj(self.qformer(hidden, mask))
        return AdapterOutput(out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device))
