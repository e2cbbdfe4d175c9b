"""Quantizing a whole causal LM, and quantized model folders.

``quantize(model, QuantConfig(...), calib)`` swaps every ``nn.Linear`` (except the head and anything
in ``skip``) for a quantized module made by the chosen method (a registry: ``rtn``, ``awq``, ``quad``),
then the head and token embedding (int8 by default).

A quantized folder is ``config.json`` (the Hugging Face config plus ``quantization_config``, which
names every quantized module's format), ``model.safetensors`` (codes, scales, float tensors; a tied
head is stored once) and the tokenizer files. Nothing pickled. ``build_model`` turns a config and a
name → weight mapping (from such a folder or a GGUF file) into the model without ever holding the
quantized matrices in fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .formats import QuantizedWeight, QuantSpec, requantize, spec_from_name
from .linear import QuantEmbedding, QuantLinear
from .methods import (  # noqa: F401  (re-exported: the registry and config the methods share)
    METHODS,
    Method,
    QuantConfig,
    register_method,
    set_module,
)

HEAD = "lm_head"


def _load_methods() -> None:
    from . import awq, quad, rtn  # noqa: F401  (each registers itself)


def method_names() -> list[str]:
    """The registered quantization methods (``rtn``, ``awq``, ``quad``)."""
    _load_methods()
    return list(METHODS)


def target_linears(model: nn.Module, config: QuantConfig) -> dict[str, nn.Linear]:
    """The float linears ``quantize`` will replace: all but the head and ``skip``."""
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and name != HEAD and not any(name.endswith(s) for s in config.skip)}


def quantize(model: nn.Module, config: QuantConfig | None = None, calib: list[torch.Tensor] | None = None,
             progress: bool = False) -> nn.Module:
    """Quantize ``model`` in place (``calib``: token-id tensors for the data-aware methods)."""
    config = config or QuantConfig()
    _load_methods()
    if config.method not in METHODS:
        raise ValueError(f"unknown quantization method {config.method!r} (have {', '.join(METHODS)})")
    METHODS[config.method](model, target_linears(model, config), config, calib, progress)
    quantize_head_and_embedding(model, config)
    model.config.quantization_config = config.to_dict()
    return model


def quantize_head_and_embedding(model: nn.Module, config: QuantConfig) -> None:
    """The token embedding and output head: int8 per channel, or int4 in ``config``'s groups."""

    def group_for(bits: int) -> int:
        return -1 if bits == 8 else config.group_size

    emb, head = model.get_input_embeddings(), getattr(model, HEAD, None)
    tied = isinstance(head, nn.Linear) and isinstance(emb, nn.Embedding) and head.weight is emb.weight
    if config.embed_bits and isinstance(emb, nn.Embedding):
        qemb = QuantEmbedding.from_embedding(emb, QuantSpec(config.embed_bits, group_for(config.embed_bits)))
        model.set_input_embeddings(qemb)
        if tied and config.head_bits == config.embed_bits:
            setattr(model, HEAD, QuantLinear.from_weight(qemb.qweight, exact=config.exact_head))
            return
    if config.head_bits and isinstance(head, nn.Linear):
        spec = QuantSpec(config.head_bits, group_for(config.head_bits))
        setattr(model, HEAD, QuantLinear.from_linear(head, spec, exact=config.exact_head))


# --- describing and rebuilding the quantized modules ----------------------------------------------

def module_formats(model: nn.Module) -> dict[str, dict]:
    """``{module name: {"type": ..., "format": ...}}`` for every quantized module (saved in config.json)."""
    formats = {}
    for name, m in model.named_modules():
        if callable(getattr(m, "describe", None)) and name not in formats:
            formats[name] = m.describe()
            formats.update({f"{name}.{sub}": None for sub, _ in m.named_modules() if sub})  # inner parts
    return {k: v for k, v in formats.items() if v is not None}


def _empty_model(config: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _rebuild_meta_buffers(model: nn.Module) -> None:
    """Modules whose only state is computed buffers (rotary tables) are made again for real."""
    for name, m in list(model.named_modules()):
        own = list(m.buffers(recurse=False))
        if own and any(b.is_meta for b in own) and not list(m.parameters(recurse=False)):
            set_module(model, name, type(m)(config=model.config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"weights missing from the checkpoint: {', '.join(left[:8])}"
                         + (" ..." if len(left) > 8 else ""))


def _config_embed_scale(config: Any, embedding: nn.Module) -> float:
    """The row scale of an embedding built on the meta device: Gemma's is sqrt(hidden size)."""
    if getattr(embedding, "embed_scale", None) is None:
        return 1.0
    return float(config.hidden_size) ** 0.5


def build_model(config: Any, tensors: dict[str, QuantizedWeight | torch.Tensor],
                formats: dict[str, dict] | None = None, head_exact: bool = False, body_exact: bool = True,
                regroup_tied: bool = True) -> nn.Module:
    """A Hugging Face causal LM from ``name → weight`` (``QuantizedWeight`` for quantized ones).

    Built on the meta device, so float copies of quantized matrices are never allocated. A tied
    head reuses the embedding's codes; with ``regroup_tied``, a grouped int8 table (GGUF Q8_0) is
    re-grouped per channel once, so the head can use the fast int8 kernels. ``head_exact`` / ``body_exact``:
    whether the head / the other linears keep activations in float where ``formats`` does not say (see
    ``QuantConfig``).
    """
    model = _empty_model(config)
    formats = formats or {}
    quads = tuple(name + "." for name, desc in formats.items() if desc.get("type") == "quad")
    floats: dict[str, torch.Tensor] = {}
    for key, w in tensors.items():
        module_name = key.rsplit(".", 1)[0]
        if quads and key.startswith(quads):
            continue  # loaded below from its own tensors
        if isinstance(w, QuantizedWeight):
            base = model.get_submodule(module_name)
            if isinstance(base, nn.Embedding):
                if regroup_tied and w.spec.bits == 8 and w.spec.group_size > 0 and config.tie_word_embeddings:
                    w = requantize(w, QuantSpec(8, -1))
                saved = formats.get(module_name, {}).get("output_scale")
                scale = saved if saved is not None else _config_embed_scale(config, base)
                new = QuantEmbedding.from_weight(w, base.padding_idx, scale)
            else:
                desc = formats.get(module_name, {})
                exact = desc.get("exact", head_exact if module_name == HEAD else body_exact)
                new = QuantLinear.from_weight(w, tensors.get(module_name + ".bias"), exact=exact,
                                              act_bits=desc.get("act_bits", 16))
            set_module(model, module_name, new)
        elif not (key.endswith(".bias") and isinstance(tensors.get(f"{module_name}.weight"),
                                                          QuantizedWeight)):
            floats[key] = w
    for name, desc in formats.items():
        if desc.get("type") == "quad":
            from .quad import QuadLinear

            own = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
            set_module(model, name, QuadLinear.from_state(desc, own))
    if getattr(config, "tie_word_embeddings", False) and f"{HEAD}.weight" not in tensors:
        emb = model.get_input_embeddings()
        if isinstance(emb, QuantEmbedding):
            setattr(model, HEAD, QuantLinear.from_weight(emb.qweight, exact=head_exact))
    model.load_state_dict(floats, strict=False, assign=True)
    if isinstance(getattr(model, HEAD, None), nn.Linear) and model.lm_head.weight.is_meta:
        model.lm_head.weight = model.get_input_embeddings().weight  # a tied float head
    _rebuild_meta_buffers(model)
    return model.eval()


# --- folders --------------------------------------------------------------------------------------

def _shared_with_embedding(model: nn.Module) -> bool:
    head, emb = getattr(model, HEAD, None), model.get_input_embeddings()
    return (isinstance(head, QuantLinear) and isinstance(emb, QuantEmbedding)
            and head.scale.data_ptr() == emb.scale.data_ptr())


def save_quantized(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) for a quantized model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if _shared_with_embedding(model):
        state = {k: v for k, v in state.items() if not k.startswith(HEAD + ".")}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop(f"{HEAD}.weight", None)
    seen: dict[int, str] = {}
    for k in list(state):  # safetensors refuses shared storage: keep one copy of each tensor
        ptr = state[k].data_ptr()
        if ptr in seen and state[k].numel():
            raise ValueError(f"{k} shares storage with {seen[ptr]}; untie it before saving")
        seen[ptr] = k
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt", "producer": "speechllm.quant"})
    config = model.config.to_dict()
    qcfg = dict(getattr(model.config, "quantization_config", None) or QuantConfig(method="import").to_dict())
    qcfg["modules"] = module_formats(model)
    config["quantization_config"] = qcfg
    config.pop("_name_or_path", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def is_quantized_folder(folder: str | Path) -> bool:
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    qcfg = json.loads(cfg.read_text()).get("quantization_config") or {}
    return qcfg.get("quant_method") == "speechllm"


def load_quantized(folder: str | Path) -> nn.Module:
    """The model ``save_quantized`` wrote (safetensors only)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    qcfg = raw.pop("quantization_config")
    formats = qcfg.pop("modules", {})
    config = AutoConfig.for_model(**raw)
    state = load_file(str(folder / "model.safetensors"))
    tensors: dict[str, QuantizedWeight | torch.Tensor] = {}
    for key, value in state.items():
        module_name, _, leaf = key.rpartition(".")
        desc = formats.get(module_name)
        if desc is None or desc["type"] == "quad":
            tensors[key] = value
        elif leaf == "codes":
            spec = spec_from_name(desc["format"])
            tensors[module_name + ".weight"] = QuantizedWeight(
                spec, value, state[module_name + ".scale"], state.get(module_name + ".offset"))
        elif leaf == "bias":
            tensors[key] = value
    model = build_model(config, tensors, formats, head_exact=QuantConfig.from_dict(qcfg).exact_head,
                        regroup_tied=False)
    config.quantization_config = {**qcfg}
    model.config.quantization_config = {**qcfg}
    return model


class ScaledEmbedding(nn.Embedding):
    """A float embedding whose rows are multiplied by ``output_scale`` (Gemma's sqrt(hidden size))."""

    output_scale = 1.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = super().forward(ids)
        return rows * self.output_scale if self.output_scale != 1.0 else rows


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace quantized modules by float ``nn.Linear`` / ``nn.Embedding`` (ties kept)."""
    done: dict[int, nn.Parameter] = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear | QuantEmbedding):
            key = m.scale.data_ptr()
            weight = done.setdefault(key, nn.Parameter(m.dequantize(dtype), requires_grad=False))
            if isinstance(m, QuantEmbedding):
                new = ScaledEmbedding(m.num_embeddings, m.embedding_dim, m.padding_idx, _weight=weight)
                new.output_scale = m.output_scale
            else:
                new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
                new.weight = weight
                if m.bias is not None:
                    new.bias = nn.Parameter(m.bias.detach().to(dtype), requires_grad=False)
            set_module(model, name, new)
    model.config.__dict__.pop("quantization_config", None)
    return model


# --- accounting -----------------------------------------------------------------------------------

def weight_bytes(model: nn.Module, include_prepared: bool = True) -> int:
    """Bytes held by parameters and buffers (each storage once), plus kernels' re-packed copies."""
    seen, total = set(), 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen and not t.is_meta:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        elif isinstance(t, tuple | list):
            for x in t:
                add(x)
        elif isinstance(t, QuantizedWeight):
            add((t.codes, t.scale, t.offset))
        elif t is not None and hasattr(t, "__getstate__") and "LinearPackedParams" in type(t).__name__:
            add(torch.ops.quantized.linear_unpack(t)[0].int_repr())  # fbgemm's copy: about its int8 size

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
    if include_prepared:
        for m in model.modules():
            for state in getattr(m, "_prepared", {}).values():
                add(state)
    return total


def compact(model: nn.Module) -> int:
    """Let every ``QuantLinear`` whose kernel copy can stand in for its codes drop them; how many did."""
    return sum(m.compact() for m in model.modules() if isinstance(m, QuantLinear))


def calibration_batches(tokenizer: Any, texts: Iterable[str], seq_len: int = 256, n: int = 32
                        ) -> list[torch.Tensor]:
    """Join texts and cut ``n`` token windows of ``seq_len`` (the data-aware methods' input)."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t.strip() + "\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= seq_len * n:
            break
    return [torch.tensor(ids[i:i + seq_len])[None] for i in range(0, len(ids) - seq_len + 1, seq_len)][:n]

