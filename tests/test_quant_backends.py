"""Every kernel against the dequantized reference; the measured choice, its cache, compaction, gradients."""

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

from speechllm.quant import BACKENDS, QuantLinear, QuantSpec, quantize_weight
from speechllm.quant import backends as kernels

# max |y - y_ref| / max |y_ref|: bf16 activations cost ~3 significant digits; per-tensor int8 activations more
BOUND = {True: 2e-2, False: 6e-2}
SPECS = [QuantSpec(4, 32), QuantSpec(4, 64), QuantSpec(4, 128), QuantSpec(8, -1), QuantSpec(8, 32)]


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_LOADED", False)


def _backends_to_test():
    names = [n for n in BACKENDS if n != "compile" or os.environ.get("SPEECHLLM_TEST_COMPILE")]
    return [n for n in names if BACKENDS[n].supports(QuantSpec(8, -1), 128, 256, torch.device("cpu"))
            or BACKENDS[n].supports(QuantSpec(4, 32), 128, 256, torch.device("cpu"))]


@pytest.mark.parametrize("name", _backends_to_test())
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("m", [1, 7, 64])
def test_backend_matches_dequantized_reference(name, spec, m):
    backend = BACKENDS[name]
    n, k = 128, 256
    if not backend.supports(spec, n, k, torch.device("cpu")):
        pytest.skip(f"{name} does not take {spec.name}")
    torch.manual_seed(0)
    qw = quantize_weight(torch.randn(n, k), spec)
    x = torch.randn(m, k)
    ref = F.linear(x, qw.dequantize())
    out = backend.run(backend.prepare(qw), x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert (out - ref).abs().max() / ref.abs().max() < BOUND[backend.exact]


def test_dequant_backend_is_exact():
    """The float product of the dequantized weight; a few rows each get what they get alone."""
    qw = quantize_weight(torch.randn(64, 96), QuantSpec(4, 32))
    w = qw.dequantize()
    few, many = torch.randn(3, 96), torch.randn(40, 96)
    alone = torch.cat([F.linear(row[None], w) for row in few])
    assert torch.equal(BACKENDS["dequant"].run(qw, few), alone)
    assert torch.equal(BACKENDS["dequant"].run(qw, many), F.linear(many, w))


@pytest.mark.parametrize(
    "name", ["dequant", "int4pack-cpu", "int8pack", "dyn-int8", "int8-rows", "int4-rows"])
@pytest.mark.parametrize("k", [96, 128])  # int8-rows: a plain-C tail / whole 64-byte blocks
def test_a_few_rows_get_the_numbers_they_get_alone(name, k):
    """What speculative decoding's verify pass relies on (speechllm.quant.backends.ROW_EXACT_UP_TO)."""
    bits = 4 if name in ("dequant", "int4pack-cpu", "int4-rows") else 8
    spec = QuantSpec(bits, 32 if bits == 4 else -1)
    if name not in BACKENDS or not BACKENDS[name].supports(spec, 128, k, torch.device("cpu")):
        pytest.skip(f"{name} is not in this torch build or has no compiler here")
    qw = quantize_weight(torch.randn(128, k), spec)
    backend = BACKENDS[name]
    state = backend.prepare(qw)
    x = torch.randn(9, k)
    alone = torch.cat([backend.run(state, row[None]) for row in x])
    assert torch.equal(backend.run(state, x), alone)



@pytest.mark.parametrize("n", [40, 152])  # int8-rows: blocks of 16 weight rows, then the rest one by one
def test_int8_rows_blocks_give_exact_integer_sums(n):
    """Several rows go through blocks of sixteen weight rows; each output is its row's exact integer sum,
    scaled: the same as a float reference of the codes, and bit for bit a row alone."""
    spec = QuantSpec(8, -1)
    if "int8-rows" not in BACKENDS or not BACKENDS["int8-rows"].supports(spec, n, 96, torch.device("cpu")):
        pytest.skip("int8-rows has no compiler here")
    qw = quantize_weight(torch.randn(n, 96), spec)
    backend = BACKENDS["int8-rows"]
    state = backend.prepare(qw)
    x = torch.randn(5, 96)
    out = backend.run(state, x)
    assert torch.equal(out, torch.cat([backend.run(state, row[None]) for row in x]))
    # the activations' own codes: scale and zero point per row over its range and 0, as int8_rows.c has them
    low, high = x.min(1, keepdim=True).values.clamp(max=0), x.max(1, keepdim=True).values.clamp(min=0)
    scale = (high - low) / 255
    zero = torch.round(-low / scale)
    codes = (torch.round(x / scale) + zero).clamp(0, 255)
    sums = (codes - zero).double() @ qw.codes.double().T  # exact in double: small integers
    reference = sums.float() * (scale * qw.scale[:, 0].float()[None])
    assert torch.allclose(out, reference, rtol=1e-6, atol=1e-6)


def test_int4_rows_sums_codes_against_int8_blocks_of_activations():
    """int4-rows: activations as int8 per block of 32 (d = max |x| / 127), integer sums per weight group,
    then each group's scale and offset; its own packed copy gives the codes back."""
    spec, backend = QuantSpec(4, 32), BACKENDS.get("int4-rows")
    if backend is None or not backend.supports(spec, 48, 96, torch.device("cpu")):
        pytest.skip("int4-rows needs AVX-512 VNNI and a compiler")
    qw = quantize_weight(torch.randn(48, 96), spec)
    state = backend.prepare(qw)
    assert torch.equal(kernels._int4_rows_codes(state), qw.codes)
    x = torch.randn(5, 96)
    x[2, 32:64] = 0  # an all-zero block
    out = backend.run(state, x)
    blocks = x.reshape(5, 3, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    codes = torch.where(d > 0, torch.round(blocks / d), torch.zeros(()))  # [rows, groups, 32]
    w = qw.int_codes().double().reshape(48, 3, 32)  # [n, groups, 32]
    sums = torch.einsum("rgi,ngi->rng", codes.double(), w)  # exact in double: small integers
    scale, offset = qw.scale.double()[None], qw.offset.double()[None]  # [1, n, groups]
    code_sums = codes.double().sum(-1)[:, None]  # [rows, 1, groups]
    reference = (d.double()[:, None, :, 0] * (scale * sums + offset * code_sums)).sum(-1)
    assert torch.allclose(out.double(), reference, rtol=1e-5, atol=1e-5)

def test_choice_is_measured_once_and_cached(tmp_path):
    layer = QuantLinear.from_linear(torch.nn.Linear(256, 128), QuantSpec(4, 32))
    layer(torch.randn(1, 256))
    layer(torch.randn(2, 5, 256))  # 10 rows: the same bucket (row-exact batches share the one-row choice)
    layer(torch.randn(3, 8, 256))  # 24 rows: another bucket
    cache = json.loads((tmp_path / "kernels.json").read_text())
    assert len(cache) == 2 and {k.split("|")[-3] for k in cache} == {"decode+verify8", "small"}
    assert all(v in BACKENDS and BACKENDS[v].exact for v in cache.values())
    assert set(layer._prepared) <= {b.name for b in layer._chosen.values()}
    # a second layer of the same shape reuses the choice without timing anything
    other = QuantLinear.from_linear(torch.nn.Linear(256, 128), QuantSpec(4, 32))
    calls = []
    original = kernels.time_backend
    kernels.time_backend = lambda *a, **kw: calls.append(a) or original(*a, **kw)
    try:
        other(torch.randn(1, 256))
    finally:
        kernels.time_backend = original
    assert calls == [] and other._chosen["decode"].name == layer._chosen["decode"].name


def test_a_process_with_other_kernels_keeps_its_own_choice(monkeypatch):
    """A process where the chosen kernel cannot run (SPEECHLLM_NATIVE=0 after a native run) chooses
    again, and leaves the other processes' choice in kernels.json as it was."""
    layer = QuantLinear.from_linear(torch.nn.Linear(256, 128), QuantSpec(4, 32), exact=False)
    x = torch.randn(1, 256)
    expected = layer(x)
    (key,) = kernels._CHOICES
    gone = kernels._CHOICES[key]
    monkeypatch.setitem(BACKENDS, gone, dataclasses.replace(BACKENDS[gone], supports=lambda *a: False))
    again = QuantLinear.from_linear(torch.nn.Linear(256, 128), QuantSpec(4, 32), exact=False)
    again.load_state_dict(layer.state_dict())
    assert torch.allclose(again(x), expected, rtol=0.05, atol=0.05)
    assert again._chosen["decode"].name != gone
    assert len(kernels._CHOICES) == 2 and kernels._CHOICES[key] == gone


def test_forced_backend_and_inexact_choice():
    lin = torch.nn.Linear(256, 128)
    forced = QuantLinear.from_linear(lin, QuantSpec(4, 32), backend="dequant")
    x = torch.randn(24, 256)
    assert torch.equal(forced(x), F.linear(x, forced.dequantize()) + forced.bias)
    anything = QuantLinear.from_linear(lin, QuantSpec(8, -1), exact=False)
    anything(x)
    assert anything._chosen["small"].name in {b.name for b in kernels.candidates(
        anything.spec, 128, 256, x.device, exact=False)}


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(8, -1)], ids=lambda s: s.name)
def test_compact_holds_the_weight_once(spec):
    layer = QuantLinear.from_linear(torch.nn.Linear(256, 128, bias=False), spec, exact=False)
    x = torch.randn(1, 256)
    y = layer(x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    if layer.compact():
        assert layer.codes is None
        assert torch.equal(layer.state_dict()["codes"], state["codes"])
        assert torch.equal(layer(x), y)
    layer.uncompact()
    assert torch.equal(layer.codes, state["codes"])


def test_gradient_reaches_the_input_only():
    torch.manual_seed(3)
    layer = QuantLinear.from_linear(torch.nn.Linear(256, 128), QuantSpec(4, 32))
    x = torch.randn(5, 256, requires_grad=True)
    layer(x).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, layer.dequantize(), layer.bias).pow(2).sum().backward()
    assert (x.grad - x_ref.grad).abs().max() / x_ref.grad.abs().max() < 5e-2
    assert all(not p.requires_grad for p in layer.parameters())


@pytest.mark.skipif("dyn-int8" not in BACKENDS, reason="no fbgemm/onednn engine")
@pytest.mark.parametrize("m", [1, 7])
def test_dyn8_row_blocks_give_the_same_products(m):
    """A tall weight is prepacked in row blocks (fbgemm packs one big matrix slower): same numbers."""
    torch.manual_seed(0)
    qw = quantize_weight(torch.randn(200, 64), QuantSpec(8, -1))
    whole, blocks = kernels._dyn8_prepare(qw, block_rows=1024), kernels._dyn8_prepare(qw, block_rows=64)
    assert (len(whole), len(blocks)) == (1, 4)
    x = torch.randn(m, 64)
    assert torch.equal(kernels._dyn8_run(blocks, x), kernels._dyn8_run(whole, x))
    assert torch.equal(kernels._dyn8_codes(blocks), qw.codes)


@pytest.mark.parametrize("spec", [QuantSpec(4, 32), QuantSpec(8, -1)], ids=lambda s: s.name)
def test_compact_reads_codes_back_only_without_a_checked_round_trip(spec, monkeypatch):
    import dataclasses

    def layer_on(backend_name):
        layer = QuantLinear.from_linear(torch.nn.Linear(256, 128, bias=False), spec, exact=False,
                                        backend=backend_name)
        layer(torch.randn(1, 256))
        return layer

    name = "int4pack-cpu" if spec.bits == 4 else "dyn-int8"
    if name not in BACKENDS:
        pytest.skip(f"no {name} kernel here")
    backend, reads = BACKENDS[name], []

    def counted(state):
        reads.append(1)
        return backend.codes_from_state(state)

    monkeypatch.setitem(BACKENDS, name, dataclasses.replace(backend, codes_from_state=counted))
    layer = layer_on(name)
    codes = layer.codes.clone()
    assert backend.round_trip(layer._prepared[name])  # this torch build: checked once, trusted
    assert layer.compact() and reads == []
    assert torch.equal(layer.state_dict()["codes"], codes)  # given back from the kernel's copy
    # a round trip not known to be exact: the codes are read back and compared first
    monkeypatch.setitem(BACKENDS, name, dataclasses.replace(
        backend, codes_from_state=lambda state: torch.zeros_like(codes), round_trip=lambda state: False))
    other = layer_on(name)
    kept = other.codes.clone()
    assert not other.compact() and torch.equal(other.codes, kept)
