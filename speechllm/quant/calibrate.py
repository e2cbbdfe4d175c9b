"""Calibration plumbing shared by the data-aware methods: run a model layer by layer over calibration
batches, hand each layer's linear inputs to a method, and feed the (now quantized) layer's outputs to
the next layer, as GPTQ and AWQ do. Also perplexity, the quality measure."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks (``model.model.layers`` in Llama-family models)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("no decoder layer list found in the model")
    return max(lists, key=len)


class _Stop(Exception):
    pass


@torch.no_grad()
def first_layer_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[tuple, dict]]:
    """``(args, kwargs)`` the model passes its first decoder layer, once per batch."""
    layer = decoder_layers(model)[0]
    seen: list[tuple[tuple, dict]] = []

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))
        raise _Stop

    handle = layer.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids.to(next(model.parameters()).device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _recorder(inputs: dict[str, list[torch.Tensor]], name: str, max_tokens: int) -> Callable:
    """A pre-hook keeping up to ``max_tokens`` input rows of one linear in ``inputs[name]``."""

    def hook(_m: nn.Module, hook_args: tuple) -> None:
        x = hook_args[0].detach().reshape(-1, hook_args[0].shape[-1]).float()
        have = sum(t.shape[0] for t in inputs.setdefault(name, []))
        if have < max_tokens:
            inputs[name].append(x[: max_tokens - have])

    return hook


LayerFn = Callable[[int, nn.Module, dict[str, torch.Tensor]], None]


@torch.no_grad()
def layerwise(model: nn.Module, batches: list[torch.Tensor], fn: LayerFn, max_tokens: int = 4096,
              progress: bool = False) -> None:
    """For each decoder layer: record the inputs of its ``nn.Linear`` modules (up to ``max_tokens`` rows
    each, ``{relative name: [T, K]}``), call ``fn(index, layer, inputs)`` (which may quantize the layer),
    then run the layer again to make the next layer's inputs."""
    from tqdm import tqdm

    states = first_layer_inputs(model, batches)
    layers = decoder_layers(model)
    for index, layer in enumerate(tqdm(layers, desc="quantizing layers", disable=not progress)):
        inputs: dict[str, list[torch.Tensor]] = {}

        handles = [m.register_forward_pre_hook(_recorder(inputs, name, max_tokens))
                   for name, m in layer.named_modules() if type(m) is nn.Linear]
        for args, kwargs in states:
            layer(*args, **kwargs)
        for h in handles:
            h.remove()
        fn(index, layer, {k: torch.cat(v) for k, v in inputs.items()})
        states = [((_hidden(layer(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in states]


@torch.no_grad()
def perplexity(model: nn.Module, batches: list[torch.Tensor]) -> float:
    """exp(mean next-token negative log-likelihood) over ``[1, T]`` token batches."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for ids in batches:
        ids = ids.to(device)
        logits = model(ids, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(total / max(count, 1))
