"""The engine's decode attention: a native kernel (``attention.c``) for steps and verify passes.

A step (one new position per row) and a verify pass (a few positions of a row) attend to the whole KV
cache with a single query row each: work that ``scaled_dot_product_attention`` does with a matrix
product per head and call. The kernel computes each query alone, by the same instructions whatever
the number of queries, so a verify pass is one call per layer and still gives each position a step's
numbers bit for bit. It is built at first use (:mod:`speechllm.native`); without a C compiler, or with
``SPEECHLLM_NATIVE=0``, the engine attends with ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import ctypes
import math
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from speechllm.native import load, traced


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be had."""
    return load(Path(__file__).with_name("attention.c"), {
        "speechllm_attend": "i:piippiippiiiiiiifi",
        "speechllm_rope_attend": "i:piipiippppiipppiiiiiiifi"})


def native_attention(dtype: torch.dtype, device: torch.device, heads: int, kv_heads: int, dim: int) -> bool:
    """Whether :func:`attend` serves a model of this shape here (float32 on the CPU, head_dim a
    multiple of 16 up to 256, whole query groups per key head) and the kernel is built."""
    shape_ok = dim % 16 == 0 and dim <= 256 and heads % kv_heads == 0
    return dtype == torch.float32 and device.type == "cpu" and shape_ok and library() is not None


def _check_cache(keys: Tensor, values: Tensor) -> None:
    kv_heads, capacity, dim = keys.shape[1:]
    cache_strides = (kv_heads * capacity * dim, capacity * dim, dim, 1)
    if keys.stride() != cache_strides or values.stride() != cache_strides:
        raise ValueError("attend: the cache rows must be contiguous")


def attend(q: Tensor, keys: Tensor, values: Tensor, start: int, window: int = 0) -> Tensor:
    """Causal attention of new positions ``q`` [rows, t, heads, dim] (the last dim contiguous) over the
    cache ``keys``/``values`` [rows, kv_heads, capacity, dim]: position j sees columns [0, start + j]
    (``window`` > 0: the last ``window`` of them). Returns [rows, t, heads * dim]."""
    rows, t, heads, dim = q.shape
    kv_heads, capacity = keys.shape[1], keys.shape[2]
    _check_cache(keys, values)
    if q.stride(2) != dim or q.stride(3) != 1:
        raise ValueError("attend: q's heads must be contiguous")
    out = torch.empty(rows, t, heads * dim, dtype=q.dtype, device=q.device)
    threads = torch.get_num_threads()
    scratch = torch.empty(threads * (start + t + 16), dtype=q.dtype)
    with traced("speechllm::attend"):
        failed = library().speechllm_attend(
            q.data_ptr(), q.stride(0), q.stride(1), keys.data_ptr(), values.data_ptr(), keys.stride(0),
            capacity, out.data_ptr(), scratch.data_ptr(), rows, t, heads, kv_heads, dim, start, window,
            1.0 / math.sqrt(dim), threads)
    if failed:
        raise ValueError(f"attend: unsupported shape heads={heads} kv_heads={kv_heads} dim={dim}")
    return out


def rope_attend(qk: Tensor, v: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, start: int,
                heads: int, scale: float | None = None, window: int = 0) -> Tensor:
    """A layer's attention for a step or a verify pass in one native call: the rotary embedding of the
    ``heads`` query heads and the key heads side by side in ``qk`` [rows, t, (heads + kv_heads) * dim]
    (``x * cos + roll(x, dim / 2) * sin``, ``sin`` signed as rotate_half needs, [rows, t, dim]), the keys
    and ``v`` [rows, t, kv_heads * dim] written into the cache at columns [start, start + t), then
    :func:`attend` (scores scaled by ``scale``, default ``1 / sqrt(dim)``; ``window``: a sliding layer's). The
    same numbers as those steps in torch followed by :func:`attend`."""
    rows, t, _ = qk.shape
    kv_heads, capacity, dim = keys.shape[1:]
    _check_cache(keys, values)
    if qk.stride(2) != 1 or v.stride(2) != 1 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("rope_attend: qk and v rows, cos and sin must be contiguous")
    if keys.shape[2] < start + t or cos.numel() != rows * t * dim or sin.numel() != rows * t * dim:
        raise ValueError("rope_attend: the cache or the rotary tables do not fit these positions")
    out = torch.empty(rows, t, heads * dim, dtype=qk.dtype)
    rotated = torch.empty(rows * t * heads * dim, dtype=qk.dtype)
    threads = torch.get_num_threads()
    scratch = torch.empty(threads * (start + t + 16), dtype=qk.dtype)
    with traced("speechllm::attend"):
        failed = library().speechllm_rope_attend(
            qk.data_ptr(), qk.stride(0), qk.stride(1), v.data_ptr(), v.stride(0), v.stride(1), cos.data_ptr(),
            sin.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.stride(0), capacity, rotated.data_ptr(),
            out.data_ptr(), scratch.data_ptr(), rows, t, heads, kv_heads, dim, start, window,
            1.0 / math.sqrt(dim) if scale is None else scale, threads)
    if failed:
        raise ValueError(f"rope_attend: unsupported shape heads={heads} kv_heads={kv_heads} dim={dim}")
    return out
