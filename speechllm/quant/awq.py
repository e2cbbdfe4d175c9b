"""AWQ (Lin et al., 2024): activation-aware per-input-channel scales, searched on calibration data.

For each group of linears that read the same input (q/k/v after the attention norm, gate/up after the
MLP norm, down after up, o after v when the head counts allow), the input channels are scaled by
``s = mean|x| ** alpha`` (alpha from a grid, chosen to minimise the group's output error once
quantized), ``W ← W · diag(s)``, and ``1/s`` is folded into the operation that makes the input (the
norm's weight or the previous linear's rows), so the float model is unchanged and salient channels get
finer steps. Then each weight group's clipping range is searched the same way. Layer by layer, each
layer seeing the outputs of the already-quantized layers before it.
"""

from __future__ import annotations

import torch
from torch import nn

from .calibrate import layerwise
from .formats import QuantSpec, fake_quantize_activations, quantize_weight
from .linear import QuantLinear
from .methods import QuantConfig, register_method

# (module that makes the input, linears reading it), as names inside a Llama-family decoder layer
SCALE_GROUPS = [
    ("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    ("self_attn.v_proj", ["self_attn.o_proj"]),
    ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]),
    ("mlp.up_proj", ["mlp.down_proj"]),
]


def _qdq(w: torch.Tensor, spec: QuantSpec, clip: torch.Tensor | None = None) -> torch.Tensor:
    return quantize_weight(w, spec, clip).dequantize()


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], spec: QuantSpec, act_bits: int = 16,
                  grid: int = 20, tokens: int = 1024) -> torch.Tensor:
    """Per-input-channel scales minimising the group's output error after quantization (the mean
    ``|x|`` over all rows; the error over an even subsample of ``tokens`` rows)."""
    x_mean = x.abs().mean(0).clamp_min(1e-5)
    x = x[:: max(1, x.shape[0] // tokens)][:tokens]
    ref = torch.cat([x @ w.T for w in weights], dim=1)
    best, best_err = torch.ones_like(x_mean), float("inf")
    for i in range(grid + 1):
        s = x_mean.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        xs = fake_quantize_activations(x / s, act_bits)
        out = torch.cat([xs @ _qdq(w * s, spec).T for w in weights], dim=1)
        err = (out - ref).pow(2).mean().item()
        if err < best_err:
            best, best_err = s, err
    return best


def search_clip(x: torch.Tensor, w: torch.Tensor, spec: QuantSpec, steps: int = 10, min_ratio: float = 0.5,
                tokens: int = 512) -> torch.Tensor:
    """Per (row, group) range factor in [min_ratio, 1] minimising that group's share of the output error."""
    n, k = w.shape
    g = spec.group(k)
    xg = x[:: max(1, x.shape[0] // tokens)][:tokens].reshape(-1, k // g, g)  # [T, G, g]
    wg = w.reshape(n, k // g, g)
    ref_out = torch.einsum("tgk,ngk->tng", xg, wg)
    best = torch.ones(n, k // g)
    best_err = torch.full((n, k // g), float("inf"))
    for i in range(steps + 1):
        ratio = 1 - (1 - min_ratio) * i / steps
        clip = torch.full((n, k // g), ratio)
        wq = _qdq(w, spec, clip).reshape(n, k // g, g)
        err = (torch.einsum("tgk,ngk->tng", xg, wq) - ref_out).pow(2).mean(0)
        better = err < best_err
        best = torch.where(better, clip, best)
        best_err = torch.where(better, err, best_err)
    return best


def _fold_into(prev: nn.Module, s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` (norm weight, or a linear's rows and bias)."""
    prev.weight.data.div_(s.view(-1, *([1] * (prev.weight.dim() - 1))))
    if getattr(prev, "bias", None) is not None:
        prev.bias.data.div_(s)


def awq_layer(layer: nn.Module, inputs: dict[str, torch.Tensor], config: QuantConfig, targets: set[int]
              ) -> None:
    """Scale, clip and quantize one decoder layer's linears (those whose ``id`` is in ``targets``)."""
    spec = config.spec
    for prev_name, names in SCALE_GROUPS:
        names = [n for n in names if n in inputs and id(layer.get_submodule(n)) in targets]
        try:
            prev = layer.get_submodule(prev_name)
        except AttributeError:
            continue
        linears = [layer.get_submodule(n) for n in names]
        if not linears or prev.weight.shape[0] != linears[0].in_features:
            continue  # e.g. v → o with grouped-query attention: channel counts differ, no scaling
        x = inputs[names[0]]
        s = search_scales(x, [m.weight.float() for m in linears], spec, config.act_bits)
        _fold_into(prev, s)
        for n, m in zip(names, linears, strict=True):
            m.weight.data.mul_(s)
            inputs[n] = x / s
    for name, m in list(layer.named_modules()):
        if type(m) is nn.Linear and name in inputs and id(m) in targets:
            clip = search_clip(inputs[name], m.weight.float(), spec)
            qw = quantize_weight(m.weight, spec, clip)
            q = QuantLinear.from_weight(qw, m.bias, act_bits=config.act_bits, exact=config.exact_body)
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, child, q)


@register_method("awq")
def quantize_awq(model: nn.Module, linears: dict[str, nn.Linear], config: QuantConfig,
                 calib: list[torch.Tensor] | None = None, progress: bool = False) -> None:
    if not calib:
        raise ValueError("AWQ needs calibration data (--calib)")
    targets = {id(m) for m in linears.values()}
    layerwise(model, calib, lambda i, layer, inputs: awq_layer(layer, inputs, config, targets),
              progress=progress)
    from .rtn import quantize_rtn  # anything outside the decoder layers that is still float

    quantize_rtn(model, {n: m for n, m in linears.items() if type(model.get_submodule(n)) is nn.Linear},
                 config)
