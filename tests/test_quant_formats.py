"""Weight formats: packing, round-to-nearest error bounds, re-grouping, simulated activation quantization."""

import pytest
import torch
import torch.nn.functional as F

from speechllm.quant import QuantEmbedding, QuantizedWeight, QuantSpec, quantize_weight, requantize
from speechllm.quant.formats import fake_quantize_activations, pack_int4, unpack_int4


def test_pack_unpack_int4_round_trip():
    q = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (7, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert packed[0, 0] == q[0, 0] | (q[0, 1] << 4)  # even column in the low nibble


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(4, 64), QuantSpec(4, 128), QuantSpec(4, -1),
                                  QuantSpec(8, -1), QuantSpec(8, 32)])
def test_rtn_error_is_at_most_half_a_step(spec):
    torch.manual_seed(0)
    w = torch.randn(48, 256) * torch.rand(48, 1)
    qw = quantize_weight(w, spec)
    n_groups = 256 // spec.group(256)
    assert qw.shape == (48, 256) and qw.scale.shape == (48, n_groups)
    err = (qw.dequantize() - w).abs().reshape(48, n_groups, -1).amax(-1)
    assert torch.all(err <= qw.scale.float() * 0.5 + 1e-3 * w.abs().max())
    bits_per_weight = qw.nbytes * 8 / w.numel()
    assert bits_per_weight < spec.bits + 1.01  # fp16 scale (+ offset) per group


def test_int4_codes_and_q4_1_semantics():
    # w = q * scale + offset with q in [0, 15]: values on the grid come back exactly
    scale, offset = torch.tensor([[0.5]]), torch.tensor([[-3.0]])
    q = torch.arange(16, dtype=torch.uint8).repeat(2)[None]
    qw = QuantizedWeight(QuantSpec(4, 32), pack_int4(q), scale.half(), offset.half())
    assert torch.equal(qw.dequantize(), q.float() * 0.5 - 3.0)
    assert torch.equal(quantize_weight(qw.dequantize(), QuantSpec(4, 32)).int_codes(), q)


def test_requantize_group_to_channel():
    torch.manual_seed(1)
    w = torch.randn(100, 128)
    g32 = quantize_weight(w, QuantSpec(8, 32))
    chan = requantize(g32, QuantSpec(8, -1), rows_per_chunk=33)
    assert chan.spec == QuantSpec(8, -1) and chan.codes.shape == (100, 128)
    assert (chan.dequantize() - g32.dequantize()).abs().max() <= chan.scale.float().max() * 0.5 + 1e-6


def test_rows_and_quant_embedding():
    torch.manual_seed(2)
    table = torch.nn.Embedding(50, 64)
    emb = QuantEmbedding.from_embedding(table, QuantSpec(4, 32))
    ids = torch.tensor([[3, 7, 49], [0, 0, 1]])
    ref = F.embedding(ids, emb.dequantize())
    assert torch.equal(emb(ids), ref)
    assert (ref - table(ids)).abs().max() < 0.2


def test_fake_quantize_activations():
    x = torch.randn(4, 64, requires_grad=True)
    assert fake_quantize_activations(x, 16) is x
    y8 = fake_quantize_activations(x, 8)
    step = x.detach().abs().amax(-1, keepdim=True) / 127
    assert torch.all((y8 - x).abs() <= step / 2 + 1e-6)
    assert (fake_quantize_activations(x, 4) - x).abs().max() > (y8 - x).abs().max()
    y8.sum().backward()  # straight-through
    assert torch.equal(x.grad, torch.ones_like(x))
