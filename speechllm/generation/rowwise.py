"""Native row-wise ops for the static engine (``rowwise.c``): the Llama family's RMS norm and the MLP's
SiLU gate, one call each.

torch runs ``rms_norm`` on the CPU as half a dozen ops and the gate as three, and a decode step calls
them in every layer; here each is one call. Each row is computed alone (the same numbers in a step and
in a verify pass). Built at first use (:mod:`speechllm.native`); where it cannot be, the engine keeps
torch's ops.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from speechllm.native import load, traced


@cache
def library() -> ctypes.CDLL | None:
    """The compiled ops, or None where they cannot be had."""
    return load(Path(__file__).with_name("rowwise.c"),
                {"speechllm_rms_norm": "i:piipfp", "speechllm_silu_mul": "i:piip"})


def native_rms_norm(weight: Tensor, eps: float) -> Callable[[Tensor], Tensor] | None:
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dim as one native call, for float32 CPU
    weights of a size divisible by 16; None where the kernel does not serve."""
    dim = weight.shape[0]
    ok = weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 1 and dim % 16 == 0
    if not ok or library() is None:
        return None
    fn, w = library().speechllm_rms_norm, weight.detach().contiguous()

    def norm(x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or x.shape[-1] != dim:
            return F.rms_norm(x, (dim,), weight, eps)
        x = x.contiguous()
        out = torch.empty_like(x)
        with traced("speechllm::rms_norm"):
            fn(x.data_ptr(), x.numel() // dim, dim, w.data_ptr(), eps, out.data_ptr())
        return out
    return norm


def silu_mul(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` for ``gate_up`` [..., 2 * hidden] (the fused gate/up projection's output) as one
    native call; torch's ops where the kernel does not serve."""
    hidden = gate_up.shape[-1] // 2
    if gate_up.dtype != torch.float32 or hidden % 16 or library() is None:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    gate_up = gate_up.contiguous()
    out = gate_up.new_empty(*gate_up.shape[:-1], hidden)
    with traced("speechllm::silu_mul"):
        rows = gate_up.numel() // (2 * hidden)
        library().speechllm_silu_mul(gate_up.data_ptr(), rows, hidden, out.data_ptr())
    return out
