"""Speech → LLM adapters, one file each, chosen by name from a registry.

>>> adapter = build_adapter("alignformer", {"encoder_dim": 384, "llm_dim": 576})
>>> out = adapter(hidden, mask)          # AdapterOutput(embeddings, mask, aux_loss)

Each adapter class names its frozen config dataclass (``Adapter.Config``); a config is saved
as a plain dict (``dataclasses.asdict``) and rebuilt with :func:`adapter_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from speechllm.adapters.alignformer import AlignFormerAdapter, AlignFormerConfig
from speechllm.adapters.base import Adapter, AdapterOutput
from speechllm.adapters.conv import ConvAdapter, ConvConfig
from speechllm.adapters.ctc import CharVocab, CTCAdapter, CTCConfig, TokenVocab, ctc_vocab
from speechllm.adapters.ctc_posterior import CTCPosteriorAdapter, CTCPosteriorConfig
from speechllm.adapters.linear import LinearAdapter, LinearConfig
from speechllm.adapters.qformer import QFormerAdapter, QFormerConfig
from speechllm.adapters.window_qformer import WindowQFormerAdapter, WindowQFormerConfig

ADAPTERS: dict[str, type[Adapter]] = {
    "linear": LinearAdapter,
    "conv": ConvAdapter,
    "qformer": QFormerAdapter,
    "window-qformer": WindowQFormerAdapter,
    "ctc": CTCAdapter,
    "alignformer": AlignFormerAdapter,
    "ctc-posterior": CTCPosteriorAdapter,
}


def adapter_class(name: str) -> type[Adapter]:
    key = name.replace("_", "-")
    if key not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r} (known: {', '.join(ADAPTERS)})")
    return ADAPTERS[key]


def adapter_config(name: str, config: Any = None, **overrides: Any) -> Any:
    """The adapter's config dataclass from a mapping, a config, or keywords (unknown keys refused)."""
    cls = adapter_class(name).Config
    values = dict(asdict(config) if hasattr(config, "__dataclass_fields__") else (config or {}))
    values.update(overrides)
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"adapter {name!r} has no option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return cls(**values)


def build_adapter(name: str, config: Mapping[str, Any] | Any = None, **overrides: Any) -> Adapter:
    """A new adapter by registry name; ``config`` is its config dataclass or a dict of its fields."""
    return adapter_class(name)(adapter_config(name, config, **overrides))


__all__ = [
    "ADAPTERS", "Adapter", "AdapterOutput", "AlignFormerConfig", "CTCConfig", "CTCPosteriorConfig",
    "CharVocab", "ConvConfig",
    "LinearConfig", "QFormerConfig", "TokenVocab", "WindowQFormerConfig", "adapter_class", "adapter_config",
    "build_adapter", "ctc_vocab",
]
