"""Load Whisper weights from a Hugging Face folder or a CTranslate2 folder, by file detection.

Formats live in the :data:`FORMATS` registry: each knows how to recognise its folder and how to
turn it into a :class:`WhisperConfig`, a state dict with this project's parameter names and the
token-suppression lists from its config. Nothing pickled is ever unpickled: safetensors,
``torch.load(weights_only=True)`` or CTranslate2's plain binary container.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechllm.ctranslate2 import read_ct2_model
from speechllm.whisper.model import Whisper, WhisperConfig
from speechllm.whisper.tokenizer import WhisperTokenizer

StateDict = dict[str, Tensor]

# ---------------------------------------------------------------- Hugging Face transformers

_HF_RENAMES = [  # applied in order, after stripping a leading "model."
    (r"^encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"\.layers\.", ".blocks."),
    (r"\.self_attn\.", ".attn."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def hf_config_to_whisper(config: Mapping[str, Any]) -> WhisperConfig:
    """A transformers ``WhisperConfig`` (as a dict) → :class:`WhisperConfig`."""
    if config.get("activation_function", "gelu") != "gelu" or config.get("scale_embedding", False):
        raise ValueError("only Whisper's own architecture (gelu, unscaled embeddings) is supported")
    if config["encoder_attention_heads"] != config["decoder_attention_heads"]:
        raise ValueError("encoder and decoder must have the same number of heads")
    return WhisperConfig(
        n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"],
        d_model=config["d_model"], n_heads=config["encoder_attention_heads"],
        n_encoder_layers=config["encoder_layers"], n_decoder_layers=config["decoder_layers"],
        n_vocab=config["vocab_size"], n_text_ctx=config["max_target_positions"],
        d_ffn=config["encoder_ffn_dim"],
    )


def hf_state_dict_to_whisper(state_dict: Mapping[str, Tensor]) -> StateDict:
    """transformers ``WhisperForConditionalGeneration``/``WhisperModel`` names → ours."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "proj_out.weight":  # tied to the token embedding
            continue
        out[_rename(name.removeprefix("model."), _HF_RENAMES)] = tensor
    return out


def whisper_from_hf_state_dict(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> Whisper:
    """Build a :class:`Whisper` from a transformers config dict and state dict."""
    model = Whisper(hf_config_to_whisper(config))
    model.load_state_dict(hf_state_dict_to_whisper(state_dict))
    return model


def _read_hf_weights(folder: Path) -> Mapping[str, Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def _load_hf(folder: Path) -> tuple[WhisperConfig, StateDict, dict[str, Any]]:
    config = json.loads((folder / "config.json").read_text())
    generation = folder / "generation_config.json"
    if generation.is_file():
        config = {**config, **json.loads(generation.read_text())}
    suppress = {"suppress_tokens": config.get("suppress_tokens") or (),
                "begin_suppress_tokens": config.get("begin_suppress_tokens") or (),
                "alignment_heads": config.get("alignment_heads")}
    return hf_config_to_whisper(config), hf_state_dict_to_whisper(_read_hf_weights(folder)), suppress


# ---------------------------------------------------------------- CTranslate2

_CT2_RENAMES = [
    (r"/", "."),
    (r"\.layer_(\d+)\.", r".blocks.\1."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
    (r"^encoder\.position_encodings\.encodings$", "encoder.positional_embedding"),
    (r"^decoder\.position_encodings\.encodings$", "decoder.positional_embedding"),
    (r"^decoder\.embeddings\.", "decoder.token_embedding."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"\.self_attention\.layer_norm\.", ".attn_ln."),
    (r"\.self_attention\.linear_0\.", ".attn.qkv."),  # fused query/key/value
    (r"\.self_attention\.linear_1\.", ".attn.out."),
    (r"\.attention\.layer_norm\.", ".cross_attn_ln."),
    (r"\.attention\.linear_0\.", ".cross_attn.query."),
    (r"\.attention\.linear_1\.", ".cross_attn.kv."),  # fused key/value
    (r"\.attention\.linear_2\.", ".cross_attn.out."),
    (r"\.ffn\.layer_norm\.", ".mlp_ln."),
    (r"\.ffn\.linear_0\.", ".mlp.0."),
    (r"\.ffn\.linear_1\.", ".mlp.2."),
]
_FUSED = {".attn.qkv.": (".attn.query.", ".attn.key.", ".attn.value."),
          ".cross_attn.kv.": (".cross_attn.key.", ".cross_attn.value.")}


def ct2_to_state_dict(variables: Mapping[str, np.ndarray]) -> StateDict:
    """CTranslate2 Whisper variables → our state dict (fused projections split, key bias dropped)."""
    out: StateDict = {}
    for ct2_name, array in variables.items():
        if array.ndim == 0 or ct2_name == "decoder/projection/weight":  # attributes; tied alias
            continue
        name = _rename(ct2_name, _CT2_RENAMES)
        tensor = torch.tensor(array)
        fused = next((f for f in _FUSED if f in name), None)
        if fused is None:
            out[name] = tensor
            continue
        for part, chunk in zip(_FUSED[fused], tensor.chunk(len(_FUSED[fused])), strict=True):
            part_name = name.replace(fused, part)
            if part_name.endswith(".key.bias"):
                if chunk.abs().max() > 0:
                    raise ValueError(f"{ct2_name}: Whisper's key projection has no bias, found one")
                continue
            out[part_name] = chunk
    return out


def ct2_config(variables: Mapping[str, np.ndarray]) -> WhisperConfig:
    """Model dimensions read off the tensor shapes."""
    conv1 = variables["encoder/conv1/weight"]
    n_layers = {side: len({m.group(1) for name in variables
                           if (m := re.match(rf"{side}/layer_(\d+)/", name))})
                for side in ("encoder", "decoder")}
    return WhisperConfig(
        n_mels=conv1.shape[1], d_model=conv1.shape[0],
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_heads=int(variables["encoder/num_heads"]),
        n_encoder_layers=n_layers["encoder"], n_decoder_layers=n_layers["decoder"],
        n_vocab=variables["decoder/embeddings/weight"].shape[0],
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        d_ffn=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
    )


def _load_ct2(folder: Path) -> tuple[WhisperConfig, StateDict, dict[str, Any]]:
    ct2 = read_ct2_model(folder / "model.bin")
    if ct2.name != "WhisperSpec":
        raise ValueError(f"{folder / 'model.bin'}: a CTranslate2 {ct2.name}, not a Whisper model")
    extra = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    suppress = {"suppress_tokens": extra.get("suppress_ids", ()),
                "begin_suppress_tokens": extra.get("suppress_ids_begin", ()),
                "alignment_heads": extra.get("alignment_heads")}
    return ct2_config(ct2.variables), ct2_to_state_dict(ct2.variables), suppress


# ---------------------------------------------------------------- a fine-tuned decoder over a base

# written by speechllm.whisper.finetune.write_tuned_whisper
TUNED_FILE, TUNED_DECODER = "tuned_whisper.json", "decoder.safetensors"
WEIGHT_FILES = ("model.bin", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _load_tuned(folder: Path) -> tuple[WhisperConfig, StateDict, dict[str, Any]]:
    """The base Whisper the folder names, with the folder's fine-tuned decoder tensors in place."""
    from speechllm.files import load_tensors
    from speechllm.zoo import resolve

    meta = json.loads((folder / TUNED_FILE).read_text())
    try:
        base = resolve(meta["base"]).path
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: fine-tuned from {meta['base']}, which cannot be loaded here: "
                         f"{exc}") from None
    config, state_dict, suppress = FORMATS[detect_format(base)].load(base)
    for name, tensor in load_tensors(folder / meta["decoder"]).items():
        key = f"decoder.{name}"
        if key not in state_dict or state_dict[key].shape != tensor.shape:
            raise ValueError(f"{folder / meta['decoder']}: {name} does not fit {meta['base']}'s decoder")
        state_dict[key] = tensor
    return config, state_dict, suppress


# ---------------------------------------------------------------- registry and entry point


@dataclass(frozen=True)
class WeightFormat:
    detect: Callable[[Path], bool]
    load: Callable[[Path], tuple[WhisperConfig, StateDict, dict[str, Any]]]


FORMATS: dict[str, WeightFormat] = {  # the first whose detect holds
    "tuned": WeightFormat(lambda p: (p / TUNED_FILE).is_file(), _load_tuned),
    "ctranslate2": WeightFormat(lambda p: (p / "model.bin").is_file(), _load_ct2),
    "huggingface": WeightFormat(
        lambda p: (p / "config.json").is_file() and any(
            (p / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                        "pytorch_model.bin")),
        _load_hf),
}


def detect_format(folder: str | Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    for name, fmt in FORMATS.items():
        if fmt.detect(folder):
            return name
    raise ValueError(f"{folder}: not a Whisper model folder (expected CTranslate2 model.bin, or "
                     "Hugging Face config.json + model.safetensors / pytorch_model.bin)")


def is_multilingual(path: str | Path) -> bool:
    """Whether a Whisper model folder holds a multilingual model (vocabulary of 51,865 or more),
    read from its small files only (no weights)."""
    folder = Path(path)
    if detect_format(folder) == "tuned":
        from speechllm.zoo import resolve

        return is_multilingual(resolve(json.loads((folder / TUNED_FILE).read_text())["base"]).path)
    if detect_format(folder) == "huggingface":
        return int(json.loads((folder / "config.json").read_text()).get("vocab_size", 0)) >= 51865
    vocabulary = folder / "vocabulary.txt"
    if vocabulary.is_file():
        with vocabulary.open(encoding="utf-8") as f:
            return sum(1 for _ in f) >= 51865
    return len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]) >= 51865


def load_whisper(path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[Whisper, WhisperTokenizer]:
    """Model (in eval mode, on ``device`` in ``dtype``) and tokenizer from a model folder."""
    folder = Path(path)
    config, state_dict, suppress = FORMATS[detect_format(folder)].load(folder)
    heads = suppress.pop("alignment_heads", None)
    with torch.device("meta"):
        model = Whisper(config)
    model.load_state_dict(state_dict, assign=True)
    model = model.to(device=device, dtype=dtype).eval()
    if heads:  # the folder's own (layer, head) pairs for word timestamps
        model.alignment_heads = tuple((int(layer), int(head)) for layer, head in heads)
    tokenizer = WhisperTokenizer.from_folder(folder, multilingual=config.is_multilingual, **suppress)
    return model, tokenizer
