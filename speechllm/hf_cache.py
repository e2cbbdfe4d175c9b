"""Hugging Face KV caches across transformers versions, in one place.

transformers 5.x renamed the forward argument and output field ``past_key_values`` to ``cache``
(the old name warns, and goes in 5.40); 4.x knows only the old one. Code here passes
``**cache_arg(cache)`` and reads :func:`output_cache`, so it runs on both without warnings.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor


def _cache_arg_name() -> str:
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


CACHE_ARG = _cache_arg_name()


def cache_arg(cache: Any) -> dict[str, Any]:
    """The keyword argument that hands ``cache`` to a model's forward."""
    return {CACHE_ARG: cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def cache_tensors(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """(keys, values) [rows, heads, length, dim] per layer."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def make_cache(tensors: list[tuple[Tensor, Tensor]]) -> Any:
    """A ``DynamicCache`` holding these (keys, values) per layer."""
    from transformers import DynamicCache

    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(tuple(tensors))
    return DynamicCache(ddp_cache_data=tensors)
