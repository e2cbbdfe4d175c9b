"""Embeddings that scale their rows (Gemma: sqrt(hidden size)) keep the scale when quantized and back."""

import torch
from torch import nn

from speechllm.quant.linear import QuantEmbedding
from speechllm.quant.model import ScaledEmbedding


class GemmaLikeEmbedding(nn.Embedding):
    def __init__(self, n: int, d: int):
        super().__init__(n, d)
        self.register_buffer("embed_scale", torch.tensor(d**0.5), persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.embed_scale


def test_quantized_embedding_keeps_the_row_scale():
    torch.manual_seed(0)
    emb = GemmaLikeEmbedding(50, 64)
    ids = torch.tensor([[1, 7, 49]])
    quantized = QuantEmbedding.from_embedding(emb)
    assert quantized.output_scale == 8.0
    error = (quantized(ids) - emb(ids)).norm() / emb(ids).norm()
    assert error < 0.02, error  # int8 rounding only: the sqrt(64) factor is applied
    back = ScaledEmbedding(50, 64, _weight=nn.Parameter(quantized.dequantize(torch.float32)))
    back.output_scale = quantized.output_scale
    assert torch.allclose(back(ids), quantized(ids), atol=1e-5)
    plain = QuantEmbedding.from_embedding(nn.Embedding(50, 64))
    assert plain.output_scale == 1.0
