"""Which engine decodes which model: a registry keyed on the Hugging Face ``model_type``.

``ENGINES[model_type]`` is a state class (``StaticState`` for the Llama family and Gemma 3); a model type not
in it decodes on the fallback (``HFState``: the model's own forward and cache).
``GenerationOptions(engine="hf")`` forces the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from speechllm.generation.hf import HFState
from speechllm.generation.static import StaticState

State = Any  # StaticState | HFState: logits, step, extend, feed, rollback, select, repeat
StateFactory = Callable[..., State]

ENGINES: dict[str, StateFactory] = {}
FALLBACK: StateFactory = HFState
NAMED: dict[str, StateFactory] = {"static": StaticState, "hf": HFState}


def register_engine(model_type: str, state: StateFactory) -> StateFactory:
    ENGINES[model_type] = state
    return state


# one module layout (q/k/v/o, gate/up/down, RMSNorm, RoPE); Gemma 3 adds norms, a GELU gate, sliding layers
for _type in ("llama", "mistral", "qwen2", "gemma3_text"):
    register_engine(_type, StaticState)


def state_class(llm: nn.Module, engine: str = "auto") -> StateFactory:
    if engine != "auto":
        if engine not in NAMED:
            raise ValueError(f"unknown engine {engine!r} (known: auto, {', '.join(NAMED)})")
        return NAMED[engine]
    return ENGINES.get(getattr(llm.config, "model_type", None), FALLBACK)


def open_state(llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
               engine: str = "auto", capacity: int = 0) -> State:
    """A batch prefilled from spliced ``inputs_embeds``, on the engine the registry picks;
    ``capacity``: columns to preallocate (prompt + reply) where the engine preallocates."""
    return state_class(llm, engine)(llm, embeds, attention_mask, position_ids, capacity=capacity)
