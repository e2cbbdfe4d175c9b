"""A decoder layer's projections as the static engine calls them: ``qkv(h)`` and ``mlp(h)``.

With low-bit weights (``QuantLinear``) and no LoRA on them, q/k/v are one fused matrix and so are
gate/up: one kernel call instead of three (two), which at one token per step is where the
non-matmul time goes. Anything else (fp32 ``nn.Linear``, peft's LoRA layers, biases of another
kind) runs the layer's own modules unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechllm.quant.formats import QuantizedWeight
from speechllm.quant.linear import QuantLinear


def _fusable(mods: list[nn.Module]) -> bool:
    if not all(type(m) is QuantLinear for m in mods):  # exactly QuantLinear: not a LoRA wrapper
        return False
    first = mods[0]
    return all(m.spec == first.spec and m.in_features == first.in_features and m.exact == first.exact
               and m.act_bits == first.act_bits and m.scale.dtype == first.scale.dtype
               and (m.bias is None) == (first.bias is None) for m in mods)


def fuse_quant_linear(mods: list[QuantLinear]) -> QuantLinear:
    """One ``QuantLinear`` whose output is the outputs of ``mods`` side by side."""
    weights = [m.qweight for m in mods]
    offsets = [w.offset for w in weights]
    fused = QuantizedWeight(weights[0].spec, torch.cat([w.codes for w in weights]),
                            torch.cat([w.scale for w in weights]),
                            None if offsets[0] is None else torch.cat(offsets))
    bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
    first = mods[0]
    return QuantLinear.from_weight(fused, bias, exact=first.exact, backend=first.backend,
                                   act_bits=first.act_bits)


class LayerProjections:
    """``qkv(h)`` → (q, k, v) and ``mlp(h)`` of one Llama-family decoder layer."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.layer_mlp = attn, mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        self.modules = qkv + [mlp.gate_proj, mlp.up_proj]  # what the fused copies stand for
        self.sizes = [m.out_features for m in qkv]
        self.fused_qkv = fuse_quant_linear(qkv) if _fusable(qkv) else None
        gate_up = [mlp.gate_proj, mlp.up_proj]
        plain_mlp = type(mlp).__name__.endswith("MLP") and hasattr(mlp, "act_fn")
        self.fused_gate_up = fuse_quant_linear(gate_up) if plain_mlp and _fusable(gate_up) else None

    def current(self, layer: nn.Module) -> bool:
        """Whether the layer still holds the modules fused here (not replaced, e.g. by peft's LoRA)."""
        a, m = layer.self_attn, layer.mlp
        now = [a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj]
        return all(x is y for x, y in zip(now, self.modules, strict=True))

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.fused_qkv is None:
            return self.attn.q_proj(h), self.attn.k_proj(h), self.attn.v_proj(h)
        return self.fused_qkv(h).split(self.sizes, dim=-1)

    def mlp(self, h: Tensor) -> Tensor:
        if self.fused_gate_up is None:
            return self.layer_mlp(h)
        gate, up = self.fused_gate_up(h).chunk(2, dim=-1)
        return self.layer_mlp.down_proj(self.layer_mlp.act_fn(gate) * up)


def fused_projections(layer: nn.Module) -> LayerProjections:
    return LayerProjections(layer)

