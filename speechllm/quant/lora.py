"""LoRA on a quantized base (QLoRA-style), through peft.

peft wraps ``nn.Linear`` and a few known quantized layers; ``QuantLinear`` joins them through peft's
custom-module mapping. :func:`get_peft_model` is peft's, with that mapping registered on the config, so
the base stays frozen in int4/int8 (its matmul through the chosen kernel) while the adapters train in
fp32, and adapters save and load as standard peft folders.

Merging: ``QuantLoraLinear.merge`` (and so peft's ``merge_and_unload``) dequantizes the base weight,
adds the LoRA delta and re-quantizes it in the base's own format; ``unmerge`` restores the codes kept
from before the merge (re-quantization is not invertible). :func:`merge_and_requantize` does this for
a whole model.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft import get_peft_model as _peft_get_peft_model
from peft.tuners.lora.layer import Linear as _PeftLoraLinear
from torch import nn

from .formats import QuantizedWeight, quantize_weight
from .linear import QuantLinear

__all__ = ["LoraConfig", "QuantLoraLinear", "get_peft_model", "merge_and_requantize", "register"]


class QuantLoraLinear(_PeftLoraLinear):
    """peft's LoRA ``Linear`` around a :class:`QuantLinear` base (frozen codes, fp32 adapters)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any):
        if config.fan_in_fan_out:
            raise ValueError("fan_in_fan_out does not apply to QuantLinear (its weight is [out, in])")
        super().__init__(base_layer, adapter_name, config, **kwargs)
        self._unmerged: dict[str, QuantizedWeight] = {}

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' delta to the dequantized base and re-quantize it in the same format."""
        from peft.tuners.tuners_utils import check_adapters_to_merge

        base: QuantLinear = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            if self.lora_variant.get(name) is not None:
                raise ValueError(f"LoRA adapter {name!r}: only plain LoRA merges into a QuantLinear")
            before = base.qweight
            w = base.dequantize() + self.get_delta_weight(name).float()
            if safe_merge and not torch.isfinite(w).all():
                raise ValueError(f"NaNs in the merged weight of adapter {name!r}")
            base.uncompact()
            base.set_weight(quantize_weight(w, base.spec, scale_dtype=base.scale.dtype))
            self._unmerged[name] = before
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Put back the codes from before the merges (newest first)."""
        base: QuantLinear = self.get_base_layer()
        while self.merged_adapters:
            base.set_weight(self._unmerged.pop(self.merged_adapters.pop()))


def register(config: LoraConfig) -> LoraConfig:
    """Let ``config`` wrap ``QuantLinear`` layers (peft's custom-module mapping)."""
    config._register_custom_module({QuantLinear: QuantLoraLinear})
    return config


def get_peft_model(model: nn.Module, config: LoraConfig, *args: Any, **kwargs: Any) -> PeftModel:
    """``peft.get_peft_model`` that also wraps ``QuantLinear`` layers (QLoRA on the 4-bit base)."""
    import warnings

    with warnings.catch_warnings():  # peft asks transformers the deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return _peft_get_peft_model(model, register(config), *args, **kwargs)


def merge_and_requantize(model: PeftModel, safe_merge: bool = True) -> nn.Module:
    """The base model with every adapter merged: quantized layers re-quantized, float layers merged.

    (peft's own ``merge_and_unload`` does the same, through :meth:`QuantLoraLinear.merge`.)"""
    return model.merge_and_unload(safe_merge=safe_merge)
