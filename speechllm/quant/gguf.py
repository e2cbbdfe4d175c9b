"""Direct GGUF import: Q4_0 / Q4_1 / Q8_0 blocks become the project's int4 / int8 weights with integer
operations only (no fp32 copy of a quantized matrix is ever made); F32 / F16 / BF16 tensors come as floats.

Block layouts (ggml): every row is a run of 32-weight blocks, each an fp16 scale ``d`` (and for Q4_1 an
fp16 min ``m``) followed by the codes. Q4 blocks hold weight ``j`` in the low nibble of byte ``j`` and
weight ``j + 16`` in its high nibble. So: Q4_1 → int4 g32 (scale ``d``, offset ``m``); Q4_0 (``d*(q-8)``)
→ int4 g32 with offset ``-8d``; Q8_0 (``d*q``) → int8 g32.

Names and config come from a small per-architecture table (``ARCHS``, llama-family for now); llama.cpp
stores Q and K rows permuted for its rotary layout, and that row permutation is undone on the codes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .formats import QuantizedWeight, QuantSpec, pack_int4

F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30


def _raw(data: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # the memory map is read-only; every use below makes new tensors
        warnings.simplefilter("ignore")
        return torch.from_numpy(np.asarray(data))


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte ``start`` of every block: ``[rows, n_blocks]``."""
    return blocks[..., start:start + 2].contiguous().view(torch.float16)[..., 0]


def _q4_codes(qs: torch.Tensor) -> torch.Tensor:
    """``[rows, n_blocks, 16]`` ggml nibbles → our packing ``[rows, n_blocks * 16]``."""
    codes = torch.cat([qs & 15, qs >> 4], dim=-1)  # weights 0..15, then 16..31 of each block
    return pack_int4(codes.reshape(qs.shape[0], -1))


def _blocks(raw: torch.Tensor, block_bytes: int) -> torch.Tensor:
    return raw.reshape(raw.shape[0], -1, block_bytes)


def _import_q4_0(raw: torch.Tensor) -> QuantizedWeight:
    b = _blocks(raw, 18)
    d = _half(b, 0)
    return QuantizedWeight(QuantSpec(4, 32), _q4_codes(b[..., 2:]), d, d * -8)


def _import_q4_1(raw: torch.Tensor) -> QuantizedWeight:
    b = _blocks(raw, 20)
    return QuantizedWeight(QuantSpec(4, 32), _q4_codes(b[..., 4:]), _half(b, 0), _half(b, 2))


def _import_q8_0(raw: torch.Tensor) -> QuantizedWeight:
    b = _blocks(raw, 34)
    return QuantizedWeight(QuantSpec(8, 32), b[..., 2:].contiguous().view(torch.int8).reshape(b.shape[0], -1),
                           _half(b, 0))


IMPORTERS: dict[int, Callable[[torch.Tensor], QuantizedWeight]] = {
    Q4_0: _import_q4_0, Q4_1: _import_q4_1, Q8_0: _import_q8_0}
FLOATS = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


def import_tensor(tensor) -> QuantizedWeight | torch.Tensor:  # tensor: gguf.ReaderTensor
    """One GGUF tensor as a :class:`QuantizedWeight` (Q4_0/Q4_1/Q8_0) or a float tensor (F32/F16/BF16)."""
    kind = int(tensor.tensor_type)
    shape = tuple(int(s) for s in reversed(tensor.shape))  # ggml lists the fastest dimension first
    raw = _raw(tensor.data)
    if kind in IMPORTERS:
        return IMPORTERS[kind](raw.reshape(shape[0], -1))
    if kind in FLOATS:
        return raw.view(FLOATS[kind]).reshape(shape).clone()
    raise ValueError(f"GGUF tensor {tensor.name}: type {tensor.tensor_type.name} is not supported "
                     f"(supported: Q4_0, Q4_1, Q8_0, F32, F16, BF16)")


def permute_rows(w: QuantizedWeight | torch.Tensor, perm: torch.Tensor) -> QuantizedWeight | torch.Tensor:
    if isinstance(w, torch.Tensor):
        return w[perm]
    return w.rows(perm)


def _unrope_perm(rows: int, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order (pairs interleaved per head) to the Hugging Face order."""
    return torch.arange(rows).reshape(n_head, rows // n_head // 2, 2).transpose(1, 2).reshape(-1)


# --- architectures --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GGUFArch:
    model_type: str
    names: dict[str, str]  # GGUF name (``blk.{i}.`` prefix removed) → HF name (``{i}`` to fill in)
    config: dict[str, str]  # metadata key (after ``<arch>.``) → HF config key
    unrope_qk: bool = True
    layer_prefix: str = "model.layers.{i}."


_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
    "output_norm.weight": "model.norm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LLAMA_CONFIG = {
    "block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "rope.freq_base": "rope_theta", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.dimension_count": "head_dim", "vocab_size": "vocab_size",
}
ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch("llama", _LLAMA_NAMES, _LLAMA_CONFIG),
    "mistral": GGUFArch("mistral", _LLAMA_NAMES, _LLAMA_CONFIG),
    "qwen2": GGUFArch("qwen2", {**_LLAMA_NAMES, "attn_q.bias": "self_attn.q_proj.bias",
                                "attn_k.bias": "self_attn.k_proj.bias",
                                "attn_v.bias": "self_attn.v_proj.bias"},
                      _LLAMA_CONFIG, unrope_qk=False),
}


@dataclass(frozen=True)
class GGUFArchitecture:
    name: str

    @property
    def supported(self) -> bool:
        """Whether :func:`read_gguf` imports it block by block (else it has to be dequantized)."""
        return self.name in ARCHS


def gguf_architecture(path: str | Path) -> GGUFArchitecture:
    from gguf import GGUFReader

    return GGUFArchitecture(str(_field(GGUFReader(str(path)), "general.architecture")))


@dataclass
class GGUFCheckpoint:
    """What a GGUF file holds, in Hugging Face terms: config, tensors by HF name, raw metadata."""

    path: Path
    arch: str
    config: dict
    tensors: dict[str, QuantizedWeight | torch.Tensor] = field(repr=False)
    metadata: dict = field(repr=False, default_factory=dict)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a GGUF file's config and tensors (quantized blocks re-packed, never dequantized)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch_name = _field(reader, "general.architecture")
    if arch_name not in ARCHS:
        raise ValueError(f"{path}: GGUF architecture {arch_name!r} not supported (have {', '.join(ARCHS)})")
    arch = ARCHS[arch_name]
    config = {"model_type": arch.model_type}
    for key, hf_key in arch.config.items():
        value = _field(reader, f"{arch_name}.{key}")
        if value is not None:
            config[hf_key] = value
    for key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{hf_key}_token_id"] = int(value)
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in reader.fields:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    config["tie_word_embeddings"] = "output.weight" not in names

    tensors: dict[str, QuantizedWeight | torch.Tensor] = {}
    for t in reader.tensors:
        in_block = t.name.startswith("blk.")
        layer, _, short = t.name.partition(".")[2].partition(".") if in_block else ("", "", t.name)
        if short not in arch.names:
            raise ValueError(f"{path}: no Hugging Face name for GGUF tensor {t.name}")
        hf = (arch.layer_prefix.format(i=layer) if layer else "") + arch.names[short]
        w = import_tensor(t)
        if arch.unrope_qk and short in ("attn_q.weight", "attn_k.weight"):
            key = "num_attention_heads" if short == "attn_q.weight" else "num_key_value_heads"
            heads = config[key]
            w = permute_rows(w, _unrope_perm(w.shape[0], heads))
        tensors[hf] = w
    metadata = {"general.name": _field(reader, "general.name"),
                "file_type": _field(reader, "general.file_type")}
    return GGUFCheckpoint(Path(path), arch_name, config, tensors, metadata)
