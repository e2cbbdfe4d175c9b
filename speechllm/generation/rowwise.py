"""Native row-wise ops for the static engine (``rowwise.c``): the Llama family's RMS norm, the MLP's
SiLU gate and a LoRA delta, one call each.

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
                {"speechllm_rms_norm": "i:piipfp", "speechllm_silu_mul": "i:piip",
                 "speechllm_lora_add": "i:piipiippppppi"})


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


class NativeLora:
    """The LoRA deltas (``lora_B(lora_A(x)) * scaling``) of peft LoRA layers that read the same input, each
    added into its slice of one output (q, k and v into the fused q/k/v output), in one native call for a
    step or a verify pass. Each row is computed alone: a verify pass gets a step's numbers.

    It serves plain LoRA layers: one active adapter, no DoRA, bias-free float32 factors on the CPU of rank
    up to 64 (128 in all), no dropout at work; ``add`` returns False where it does not (the caller adds the
    deltas itself). It reads transposed copies of the factors, made again whenever an adapter is switched,
    turned off or merged, a dropout changes mode or a factor changes (its version counter)."""

    def __init__(self, layers: list[torch.nn.Module], starts: list[int]):
        self.layers, self.starts = layers, starts
        self._weights: list[Tensor] = []
        self._dropouts: list[torch.nn.Module] = []
        self._seen: list | None = None
        self._call: tuple | None = None  # the call's arguments after x; (): nothing to add; None: not served

    @staticmethod
    def available() -> bool:
        return library() is not None

    def _state(self) -> list:
        """What the copies depend on, read from plain attributes (no module lookups: this runs every call)."""
        state: list = []
        for m in self.layers:
            state += (m._active_adapter, m._disable_adapters, len(m.merged_adapters))
        state += [w._version for w in self._weights]
        state += [d.training for d in self._dropouts]
        return state

    def _prepare(self) -> tuple | None:
        self._weights, self._dropouts = [], []
        at, bts, ranks, starts, sizes, scales = [], [], [], [], [], []
        for m, start in zip(self.layers, self.starts, strict=True):
            if m._disable_adapters or m.merged_adapters:
                continue
            names = [n for n in m.active_adapters if n in m.lora_A]
            if len(names) != 1:
                return None
            name = names[0]
            a, b, dropout = m.lora_A[name], m.lora_B[name], m.lora_dropout[name]
            wa, wb = a.weight, b.weight
            self._weights += [wa, wb]
            self._dropouts.append(dropout)
            plain = a.bias is None and b.bias is None and not getattr(m, "use_dora", {}).get(name)
            floats = wa.dtype == wb.dtype == torch.float32 and wa.device.type == "cpu"
            dropping = dropout.training and getattr(dropout, "p", 0) > 0
            if not plain or not floats or wa.shape[0] > 64 or dropping:
                return None
            rank, padded = wa.shape[0], -(-wa.shape[0] // 16) * 16  # zero rows and columns add exact zeros
            at.append(torch.cat([wa.detach().t(), wa.new_zeros(wa.shape[1], padded - rank)], 1))
            bts.append(torch.cat([wb.detach().t(), wb.new_zeros(padded - rank, wb.shape[0])]).contiguous())
            ranks.append(padded)
            starts.append(start)
            sizes.append(wb.shape[0])
            scales.append(float(m.scaling[name]))
        if not at:
            return ()
        if sum(ranks) > 128:
            return None
        at = torch.cat(at, 1).contiguous()
        addresses = [t.data_ptr() for t in bts]
        tables = [torch.tensor(v, dtype=torch.int64) for v in (addresses, ranks, starts, sizes)]
        scale = torch.tensor(scales, dtype=torch.float32)
        return (at.shape[0], at.data_ptr(), at.shape[1], len(bts), *(t.data_ptr() for t in tables),
                scale.data_ptr(), (at, bts, tables, scale))  # the last: the memory of those addresses

    def add(self, x: Tensor, out: Tensor) -> bool:
        """``out`` [..., N] += each layer's delta for ``x`` [..., k] in its columns; False: not served."""
        if self._state() != self._seen:
            self._call = self._prepare()
            self._seen = self._state()
        call = self._call
        if call is None or x.dtype != torch.float32 or out.dtype != torch.float32 or out.stride(-1) != 1:
            return False
        if not call:
            return True
        k, at, r, segments, bt, ranks, starts, sizes, scales, _ = call
        rows = x.numel() // k
        try:
            flat = out.view(rows, out.shape[-1])  # a view: the deltas land in ``out`` itself
        except RuntimeError:
            return False
        x = x.contiguous()
        with traced("speechllm::lora_add"):
            library().speechllm_lora_add(x.data_ptr(), rows, k, at, r, segments, bt, ranks, starts, sizes,
                                         scales, flat.data_ptr(), flat.stride(0))
        return True
