"""Which engine decodes which model: a registry keyed on the Hugging Face ``model_type``.

``ENGINES[model_type]`` is a state class (``StaticState`` for the Llama family); a model type not
in it decodes on the fallback (``HFState``: the model's own forward and cache).
``GenerationOptions(engine="hf")`` forces the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from speechllm.generation.hf import HFState
from speechllm.generation.static import StaticState, base_model, fits_window

State = Any  # StaticState | HFState: logits, step, extend, feed, rollback, select, repeat
StateFactory = Callable[..., State]

ENGINES: dict[str, StateFactory] = {}
FALLBACK: StateFactory = HFState
NAMED: dict[str, StateFactory] = {"static": StaticState, "hf": HFState}


def register_engine(model_type: str, state: StateFactory) -> StateFactory:
    ENGINES[model_type] = state
    return state


for _type in ("llama", "mistral", "qwen2"):  # one module layout: q/k/v/o, gate/up/down, RMSNorm, RoPE
    register_engine(_type, StaticState)


def windowed_state(llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                   capacity: int = 0) -> State:
    """Gemma 3 on the static engine while prompt + reply (``capacity``) fit its sliding window (there its
    sliding layers see every earlier position, as its global ones do); longer, on the fallback."""
    fits = fits_window(base_model(llm).config, capacity)
    state = StaticState if fits else HFState
    return state(llm, embeds, attention_mask, position_ids, capacity=capacity)


register_engine("gemma3_text", windowed_state)


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
