"""Round-to-nearest: every linear's weight rounded on its own min/max grid. No calibration data."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .linear import QuantLinear
from .methods import QuantConfig, register_method, set_module


@register_method("rtn")
def quantize_rtn(model: nn.Module, linears: dict[str, nn.Linear], config: QuantConfig,
                 calib: list[torch.Tensor] | None = None, progress: bool = False) -> None:
    for name, linear in tqdm(linears.items(), desc="rtn", disable=not progress):
        set_module(model, name, QuantLinear.from_linear(linear, config.spec, act_bits=config.act_bits,
                                                              exact=config.exact_body))
