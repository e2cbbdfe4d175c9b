"""A decoder layer's projections as the static engine calls them: ``qk_v(h)`` and ``mlp(h)``.

With low-bit weights (``QuantLinear``), q/k/v are one fused matrix and so are gate/up: one
kernel call instead of three (two), which at one token per step is where the non-matmul time goes.
Under peft's LoRA layers the fused matrix stands for their base layers and each layer's LoRA
delta is added to its slice (when its adapters are on). Anything else (fp32 ``nn.Linear``, DoRA)
runs the layer's own modules unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.generation.rowwise import NativeLora, silu_mul
from speechllm.quant.backends import ROW_EXACT_UP_TO, linear_rows_alone
from speechllm.quant.formats import QuantizedWeight
from speechllm.quant.linear import QuantLinear


def _base(m: nn.Module) -> nn.Module:
    """The layer under a peft LoRA wrapper, or the layer itself."""
    return m.base_layer if hasattr(m, "lora_A") and hasattr(m, "base_layer") else m


def direct(m: nn.Module) -> Callable[[Tensor], Tensor]:
    """``m`` as a function: a plain low-bit layer (no bias, float activations) goes straight to its kernel
    (:meth:`QuantLinear.product`: the same numbers without the module call's overhead); anything else is
    called as it is."""
    if type(m) is QuantLinear and m.bias is None and m.act_bits >= 16:
        return m.product
    return m


def _activation(act: nn.Module) -> Callable[[Tensor], Tensor]:
    """The MLP's activation as a function (``F.silu`` for transformers' SiLU modules)."""
    return F.silu if type(act).__name__ in ("SiLU", "SiLUActivation") else act


def _lora_ok(m: nn.Module) -> bool:
    return not hasattr(m, "lora_A") or not any(getattr(m, "use_dora", {}).values())


def _fusable(mods: list[nn.Module]) -> bool:
    bases = [_base(m) for m in mods]
    if not all(type(b) is QuantLinear and _lora_ok(m) for m, b in zip(mods, bases, strict=True)):
        return False
    first = bases[0]
    return all(m.spec == first.spec and m.in_features == first.in_features and m.exact == first.exact
               and m.act_bits == first.act_bits and m.scale.dtype == first.scale.dtype
               and (m.bias is None) == (first.bias is None) for m in bases)


def lora_delta(m: nn.Module, x: Tensor) -> Tensor | None:
    """What a peft LoRA layer adds to its base layer's output for ``x`` (None when nothing)."""
    if not hasattr(m, "lora_A") or m.disable_adapters or m.merged:
        return None
    out = None
    for name in m.active_adapters:
        if name in m.lora_A:
            xa = m.lora_dropout[name](x.to(m.lora_A[name].weight.dtype))
            d = _linear(m.lora_B[name], _linear(m.lora_A[name], xa)) * m.scaling[name]
            out = d if out is None else out + d
    return out


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """A LoRA factor; a verify pass's few rows each get the numbers they get alone."""
    return layer(x) if layer.bias is not None else linear_rows_alone(x, layer.weight)


def delta_adder(mods: list[nn.Module], starts: list[int]) -> Callable[[Tensor, Tensor], Tensor]:
    """``add(x, y)``: the LoRA deltas of ``mods`` (peft LoRA layers reading ``x``) added into their columns
    of ``y`` from ``starts`` on (a fresh output: in place) where their adapters are on. A step or a
    verify pass adds them in one native call (:class:`NativeLora`); bigger inputs (a prefill), and layers
    the native call does not serve, through :func:`lora_delta`."""
    native = NativeLora(mods, starts) if NativeLora.available() else None
    sizes = [_base(m).out_features for m in mods]

    def add(x: Tensor, y: Tensor) -> Tensor:
        if native is not None and x.numel() <= ROW_EXACT_UP_TO * x.shape[-1] and native.add(x, y):
            return y
        for m, start, size in zip(mods, starts, sizes, strict=True):
            d = lora_delta(m, x)
            if d is not None:
                y[..., start:start + size] += d.to(y.dtype)
        return y
    return add


def _fused_deltas(mods: list[nn.Module]) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The LoRA-wrapped ones among layers fused side by side (their outputs in that order), as one
    :func:`delta_adder` into the fused output; None when none is wrapped."""
    starts = [sum(_base(m).out_features for m in mods[:i]) for i in range(len(mods))]
    wrapped = [(m, start) for m, start in zip(mods, starts, strict=True) if hasattr(m, "lora_A")]
    return delta_adder([m for m, _ in wrapped], [start for _, start in wrapped]) if wrapped else None


def projection(m: nn.Module) -> Callable[[Tensor], Tensor]:
    """``m`` as a function; under a plain peft LoRA wrapper its base layer plus :func:`lora_delta`
    (row-exact, and without peft's per-call dispatch)."""
    if not hasattr(m, "lora_A") or not _lora_ok(m):
        return direct(m)
    base, add = direct(_base(m)), delta_adder([m], [0])
    return lambda x: add(x, base(x))


def fuse_quant_linear(mods: list[QuantLinear]) -> QuantLinear:
    """One ``QuantLinear`` whose output is the outputs of ``mods`` side by side."""
    mods = [_base(m) for m in mods]
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
    """``qk_v(h)`` → (q and k, v) and ``mlp(h)`` of one Llama-family decoder layer."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.layer_mlp = attn, mlp
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        self.modules = qkv + [mlp.gate_proj, mlp.up_proj, attn.o_proj, mlp.down_proj]  # what is held here
        self.sizes = [_base(m).out_features for m in qkv]
        self.fused_qkv = fuse_quant_linear(qkv) if _fusable(qkv) else None
        gate_up = [mlp.gate_proj, mlp.up_proj]
        plain_mlp = type(mlp).__name__.endswith("MLP") and hasattr(mlp, "act_fn")
        self.fused_gate_up = fuse_quant_linear(gate_up) if plain_mlp and _fusable(gate_up) else None
        self._qkv = direct(self.fused_qkv) if self.fused_qkv is not None else None
        self._gate_up = direct(self.fused_gate_up) if self.fused_gate_up is not None else None
        self._act = _activation(mlp.act_fn) if plain_mlp else None
        self._down, self._out = projection(mlp.down_proj), projection(attn.o_proj)
        # the LoRA-wrapped ones among the fused layers, found once (a check per call costs per token)
        self._qkv_lora = _fused_deltas(qkv) if self.fused_qkv is not None else None
        self._gate_up_lora = _fused_deltas(gate_up) if self.fused_gate_up is not None else None

    def current(self, layer: nn.Module) -> bool:
        """Whether the layer still holds the modules held here (not replaced, e.g. by peft's LoRA)."""
        a, m = layer.self_attn, layer.mlp
        now = [a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj, a.o_proj, m.down_proj]
        return all(x is y for x, y in zip(now, self.modules, strict=True))

    def qk_v(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """q and k side by side in one tensor (the rotary embedding turns both at once), and v."""
        a = self.attn
        if self.fused_qkv is None:
            return torch.cat([a.q_proj(h), a.k_proj(h)], -1), a.v_proj(h)
        qkv = self._qkv(h)
        if self._qkv_lora is not None:  # in place: the kernel's output is a fresh tensor
            self._qkv_lora(h, qkv)
        return qkv[..., :self.sizes[0] + self.sizes[1]], qkv[..., -self.sizes[2]:]

    def mlp(self, h: Tensor) -> Tensor:
        if self.fused_gate_up is None:
            return self.layer_mlp(h)
        gate_up = self._gate_up(h)
        if self._gate_up_lora is not None:  # in place: the kernel's output is a fresh tensor
            self._gate_up_lora(h, gate_up)
        if self._act is F.silu:  # the gate in one native call
            return self._down(silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self._down(self._act(gate) * up)

    def out(self, x: Tensor) -> Tensor:
        """The attention's output projection."""
        return self._out(x)


def fused_projections(layer: nn.Module) -> LayerProjections:
    return LayerProjections(layer)

