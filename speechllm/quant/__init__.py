"""The low-bit core: int8/int4 weight formats, ``QuantLinear`` and its kernels, quantization methods
(RTN, AWQ, QUAD), direct GGUF import, LoRA on a quantized base, and quantized model folders.

Knows nothing about speech. Heavy parts (methods, GGUF, LoRA) import on first use of their module.
"""

from .backends import BACKENDS, Backend, choose, register_backend
from .formats import (
    FORMATS,
    INT4,
    INT8,
    QuantizedWeight,
    QuantSpec,
    dequantize_weight,
    quantize_weight,
    requantize,
)
from .linear import QuantEmbedding, QuantLinear

__all__ = [
    "BACKENDS", "Backend", "FORMATS", "INT4", "INT8", "QuantEmbedding", "QuantLinear", "QuantSpec",
    "QuantizedWeight", "choose", "dequantize_weight", "quantize_weight", "register_backend", "requantize",
]
