"""The quantization methods' registry and the configuration they share.

``rtn.py``, ``awq.py`` and ``quad.py`` each register a method here with :func:`register_method`;
``model.py`` imports them (so every method is known once ``speechllm.quant.model`` is) and calls
the one ``QuantConfig.method`` names. Nothing here imports a method, so the methods and the model
code depend on this module and never on each other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .formats import QuantSpec


@dataclass(frozen=True)
class QuantConfig:
    """How ``quantize`` treats a model; saved as ``quantization_config`` in the folder's config.json."""

    method: str = "rtn"  # rtn | awq | quad (see METHODS)
    bits: int = 4
    group_size: int = 32
    act_bits: int = 16  # 16: weight-only; 8 or 4: activations quantized too (simulated, QUAD)
    head_bits: int = 8  # the output head: 8, 4, or 0 to keep it in float
    embed_bits: int = 8  # the token embedding: 8, 4, or 0
    exact_head: bool = False  # False lets the head use kernels that quantize activations (fbgemm int8)
    # False lets the other linears use them too (int4-rows: int8 blocks of 32, as llama.cpp runs Q4 GGUFs)
    exact_body: bool = True
    rank: int = 32  # QUAD: outlier directions kept in full precision
    skip: tuple[str, ...] = ()  # module names (or name suffixes) kept in float

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size)

    def to_dict(self) -> dict:
        return {"quant_method": "speechllm", **asdict(self), "skip": list(self.skip)}

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "skip" in kw:
            kw["skip"] = tuple(kw["skip"])
        return cls(**kw)


# --- the methods registry (filled in by rtn.py, awq.py, quad.py) ------------------------------------

Method = Callable[[nn.Module, dict[str, nn.Linear], QuantConfig, list[torch.Tensor] | None, bool], None]
METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    def add(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return add


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` under the dotted ``name`` (replacing what was there)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
