"""The LLM backbone: one loader for every source, 4-bit by default.

``load_llm(name_or_path, quant=...)`` takes a zoo name, a Hugging Face id or folder (config.json +
safetensors), a quantized folder written by ``speechllm quantize``, or a ``.gguf`` file (or a folder
holding one). It returns a Hugging Face causal LM (so ``generate``, peft and chat templates work as
usual) whose linears are ``QuantLinear`` modules, and its tokenizer.

``quant``: ``"auto"`` keeps a quantized source as it is (GGUF Q4 → int4) and quantizes a float source to
int4; ``"int4"`` / ``"int8"`` ask for that weight format; ``"none"`` gives a float model. A GGUF file is
imported block by block (``speechllm.quant.gguf``): the quantized matrices never exist in fp32. The import
is done once: its result is kept as a quantized folder in the cache (``$SPEECHLLM_CACHE/converted/``,
keyed by the GGUF file's SHA-256 and the format asked for), which later starts load directly; its
tokenizer is then built straight from its ``tokenizer.json`` once checked equal to the usual one
(``speechllm.tokenizer_cache``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_folder
from .quant.formats import INT8, QuantizedWeight, QuantSpec, requantize
from .quant.linear import QuantEmbedding, QuantLinear
from .quant.model import (
    QuantConfig,
    build_model,
    compact,
    dequantize_model,
    is_quantized_folder,
    load_quantized,
    quantize,
    save_quantized,
)

QUANT_CHOICES = ("auto", "int4", "int8", "none")


# --- sources --------------------------------------------------------------------------------------

def _gguf_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def _convert(tensors: dict[str, Any], quant: str) -> dict[str, Any]:
    """GGUF weights in the asked format: as stored, re-quantized to int8, or float."""
    if quant in ("auto", "int4"):
        return tensors
    out = {}
    for k, w in tensors.items():
        if isinstance(w, QuantizedWeight):
            if quant == "none":
                w = w.dequantize()
            elif k.endswith("embed_tokens.weight") or w.spec.bits != 8:
                w = requantize(w, INT8)
        out[k] = w
    return out


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# bumped when an import's result changes (2: the body's linears quantize activations, as llama.cpp does;
# 3: so do those of GGUFs read as float, Gemma 3's)
CONVERSION = 3


def converted_folder(gguf: Path, quant: str) -> Path:
    """Where the quantized folder made from ``gguf`` in format ``quant`` is cached."""
    from .zoo import cache_root

    return cache_root() / "converted" / f"{gguf.stem}-{file_sha256(gguf)[:16]}-{quant}-v{CONVERSION}"


def _from_gguf(path: Path, quant: str) -> tuple[nn.Module, Any]:
    """A GGUF file, imported once into a cached quantized folder (float models are not cached)."""
    file = _gguf_file(path)
    if quant == "none":
        return _import_gguf(file, quant)
    folder = converted_folder(file, quant)
    if is_quantized_folder(folder):
        return _from_quantized(folder, "auto", cached_tokenizer=True)
    model, tokenizer = _import_gguf(file, quant)
    try:  # written aside, then renamed into place whole: a killed conversion leaves no half folder
        with atomic_folder(folder) as tmp:
            save_quantized(model, tmp, tokenizer)
    except OSError as exc:  # a read-only cache costs the next start time, not this one's result
        print(f"note: could not cache the converted model in {folder} ({exc})", file=sys.stderr)
    return model, tokenizer


def _import_gguf(file: Path, quant: str) -> tuple[nn.Module, Any]:
    """Llama-family GGUFs block by block (codes kept); other architectures (Gemma 3, ...) through
    transformers' GGUF reader, which dequantizes, and then quantized here like a float model."""
    from transformers import AutoConfig, AutoTokenizer

    from .quant.gguf import gguf_architecture, read_gguf

    if not gguf_architecture(file).supported:
        return _from_float_gguf(file, quant)
    checkpoint = read_gguf(file)
    raw = dict(checkpoint.config)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    # run as llama.cpp runs a GGUF: activations quantized too (int8 blocks of 32 against Q4 weights)
    qconfig = QuantConfig(method="import", exact_body=False)
    model = build_model(config, _convert(checkpoint.tensors, quant), body_exact=qconfig.exact_body)
    if quant != "none":  # a float model carries no quantization_config
        model.config.quantization_config = qconfig.to_dict()
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    return model, tokenizer


def _from_float_gguf(file: Path, quant: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    model.config.__dict__.pop("quantization_config", None)  # transformers' note that it came from a GGUF
    _quantize_float(model.eval(), quant, exact_body=False)  # run as llama.cpp runs a GGUF, as above
    return model, AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)


def _quantize_float(model: nn.Module, quant: str, exact_body: bool = True) -> None:
    """``exact_body=False``: the body's linears may quantize their activations too (int8 blocks)."""
    if quant in ("auto", "int4"):
        quantize(model, QuantConfig(method="rtn", bits=4, group_size=32, exact_body=exact_body))
    elif quant == "int8":
        quantize(model, QuantConfig(method="rtn", bits=8, group_size=-1, exact_body=exact_body))


def _from_quantized(path: Path, quant: str, cached_tokenizer: bool = False) -> tuple[nn.Module, Any]:
    """``cached_tokenizer``: a folder this package owns (a converted GGUF), whose tokenizer may be built
    straight from its tokenizer.json once checked (``speechllm.tokenizer_cache``)."""
    from transformers import AutoTokenizer

    from .tokenizer_cache import load_tokenizer

    model = load_quantized(path)
    if quant == "none":
        dequantize_model(model)
    return model, load_tokenizer(path) if cached_tokenizer else AutoTokenizer.from_pretrained(str(path))


def _from_hf(path: Path, quant: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    _quantize_float(model, quant)
    return model, AutoTokenizer.from_pretrained(str(path))


@dataclass(frozen=True)
class Source:
    name: str
    matches: Callable[[Path], bool]
    load: Callable[[Path, str], tuple[nn.Module, Any]]


SOURCES: list[Source] = [  # tried in order
    Source("gguf", lambda p: _gguf_file(p) is not None, _from_gguf),
    Source("quantized folder", is_quantized_folder, _from_quantized),
    Source("hugging face folder", lambda p: (p / "config.json").is_file(), _from_hf),
]


# --- device, dtype, kernels -----------------------------------------------------------------------

def _cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Float parameters (norms, float linears) to ``dtype``; quantized modules keep their scales."""
    for m in model.modules():
        if isinstance(m, QuantEmbedding):
            m.out_dtype = dtype
        if isinstance(m, QuantLinear | QuantEmbedding):
            continue
        for name, p in m.named_parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                setattr(m, name, nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad))


def prepare_kernels(model: nn.Module, sizes: tuple[int, ...] = (1, 8, 64), hold_once: bool = True) -> None:
    """Choose (by measuring once per shape) and prepare every quantized layer's kernels now rather than
    inside the first request; then let layers whose kernel copy can stand in for their codes drop them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantLinear):
                for rows in sizes:
                    m.backend_for(torch.zeros(rows, m.in_features, device=m.scale.device))
    if hold_once:
        compact(model)


def load_llm(name_or_path: str | os.PathLike, quant: str = "auto", device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, prepare: bool = True) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for a zoo name, HF id/folder, quantized folder or GGUF file (see module doc)."""
    from .zoo import resolve

    quant = "none" if quant == "fp32" else quant  # the command lines' spelling of float weights
    if quant not in QUANT_CHOICES:
        raise ValueError(f"quant must be one of {', '.join(QUANT_CHOICES)} (or fp32), not {quant!r}")
    resolved = resolve(name_or_path)
    path = Path(resolved.main_file or resolved.path)
    for source in SOURCES:
        if source.matches(path):
            model, tokenizer = source.load(path, quant)
            break
    else:
        raise ValueError(f"{path}: not a GGUF file, a quantized folder or a Hugging Face model folder")
    model.to(device)
    if dtype != torch.float32:
        _cast_floats(model, dtype)
    model.eval()
    if prepare and quant != "none":
        prepare_kernels(model)
    return model, tokenizer


def quant_summary(model: nn.Module) -> dict[str, int]:
    """How many modules of each format a model holds (``{"int4-g32": 210, "int8-channel": 2, ...}``)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        spec: QuantSpec | None = getattr(m, "spec", None)
        if isinstance(m, QuantLinear | QuantEmbedding) and spec is not None:
            counts[spec.name] = counts.get(spec.name, 0) + 1
    return counts
