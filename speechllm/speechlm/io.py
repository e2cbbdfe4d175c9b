"""A trained speech-LLM as a self-describing folder; nothing pickled, every file written atomically.

    MODEL_DIR/
      config.json            format + version; encoder, adapter (name + options), LLM (+ quant)
                             by zoo name or path; LoRA spec; prompt format
      adapter.safetensors    the adapter's weights
      encoder.safetensors    only with fine-tuned encoder layers: those top blocks (+ final norm)
      lora/                  optional standard peft folder (adapter_config.json,
                             adapter_model.safetensors)

Each file goes to a temporary name in the same folder, is fsynced and renamed into place, and
the folder is fsynced after the rename, so a reader (or a crash, or a power cut) never sees half
a file; ``lora/`` is swapped as a whole. ``config.json`` is written last: a folder with a config
always has the weights it names. :func:`check_speechlm_files` tells an intact folder from a
damaged one without loading a model (safetensors headers against file sizes, JSON that parses).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from speechllm.files import (  # noqa: F401  (re-exported: the trainers import them from here)
    atomic_folder,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_text,
    check_safetensors,
    fsync_dir,
    fsync_file,
    fsync_tree,
    load_tensors,
    read_json,
    replace_folder,
)
from speechllm.speechlm.model import SpeechLLM, SpeechLLMConfig

FORMAT, VERSION = "speechllm", 2  # 2: encoder_trainable_layers
CONFIG_FILE, ADAPTER_FILE, LORA_DIR = "config.json", "adapter.safetensors", "lora"
ENCODER_FILE = "encoder.safetensors"


# ---------------------------------------------------------------- model folders


def save_speechlm(model: SpeechLLM, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a model folder; ``info`` (e.g. training facts) goes into config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.adapter.state_dict(), folder / ADAPTER_FILE, {"adapter": model.config.adapter})
    layers = model.config.encoder_trainable_layers
    if layers:
        atomic_save_tensors(model.encoder.top_layers(layers).state_dict(), folder / ENCODER_FILE,
                            {"encoder": model.config.encoder, "layers": str(layers)})
    else:
        (folder / ENCODER_FILE).unlink(missing_ok=True)
    if model.config.hearing_decoder:
        from speechllm.whisper.finetune import decoder_weights

        atomic_save_tensors(decoder_weights(model.whisper.asr.model), folder / model.config.hearing_decoder,
                            {"whisper": model.config.encoder})
    if model.has_lora:
        for peft_config in model.llm.peft_config.values():  # peft would record the local folder
            peft_config.base_model_name_or_path = peft_base_name(model.config.llm)
        with atomic_folder(folder / LORA_DIR) as tmp:
            model.llm.save_pretrained(str(tmp), save_embedding_layers=False)
    elif (folder / LORA_DIR).exists():
        shutil.rmtree(folder / LORA_DIR)
    for file, source in model.folder_files().items():
        if not (folder / file).is_file() or not (folder / file).samefile(source):  # the folder carries it
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / file, source.read_bytes())
    config = model.config.to_dict()
    config["adapter_options"] = _json_safe(vars(model.adapter.config))  # every option, dims included
    document = {"format": FORMAT, "version": VERSION, **config, "info": info or {}}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(document, indent=2) + "\n")
    return folder


def peft_base_name(llm: str) -> str:
    """The base model a saved ``lora/`` folder names: the Hugging Face id of a zoo LLM, so the peft
    folder means the same on another machine, else the name or path config.json uses."""
    from speechllm.zoo import ZOO

    entry = ZOO.get(llm)
    return entry.hf_id if entry is not None and entry.hf_id else llm


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def is_speechlm_folder(path: str | Path) -> bool:
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def speechlm_path(name_or_dir: str) -> Path | None:
    """The folder of a speech-LLM named by zoo name or path, or None when it names something else."""
    from speechllm.zoo import ZOO, resolve

    entry = ZOO.get(name_or_dir)
    if entry is not None:
        return resolve(name_or_dir).path if entry.kind == "speech-llm" else None
    path = Path(name_or_dir).expanduser()
    return path if path.is_dir() and is_speechlm_folder(path) else None


def read_config(folder: str | Path) -> tuple[SpeechLLMConfig, dict[str, Any]]:
    """(model config, info) from a model folder's config.json."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a speech-LLM model folder (no {CONFIG_FILE})")
    document = read_json(path)
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
    if document.get("version", 0) > VERSION:
        raise ValueError(f"{path}: version {document['version']} is newer than this speechllm ({VERSION})")
    info = document.pop("info", {})
    for key in ("format", "version"):
        document.pop(key, None)
    return SpeechLLMConfig.from_dict(document), info


def check_speechlm_files(folder: str | Path) -> SpeechLLMConfig:
    """The folder's config, once every file it names is there and readable: config.json parses,
    each safetensors file's header agrees with its size, the LoRA config parses. Cheap (no
    tensor is read, no model built). ``ValueError`` (damaged) or ``FileNotFoundError`` (missing)
    names the file."""
    folder = Path(folder)
    config, _ = read_config(folder)
    check_safetensors(folder / ADAPTER_FILE)
    if config.encoder_trainable_layers:
        weights = folder / ENCODER_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: config.json names fine-tuned encoder layers but {weights} "
                                    "is missing")
        check_safetensors(weights)
    if config.lora is not None:
        weights = folder / LORA_DIR / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: config.json names LoRA but {weights} is missing")
        check_safetensors(weights)
        read_json(folder / LORA_DIR / "adapter_config.json")
    for pair, file in config.memory.items():
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder}: config.json names a translation memory for {pair!r} but "
                                    f"{folder / file} is missing")
    for what, file in (("a phrase book", config.phrases), ("a draft head", config.draft_head),
                       ("a fine-tuned Whisper decoder", config.hearing_decoder)):
        if file and not (folder / file).is_file():
            raise FileNotFoundError(f"{folder}: config.json names {what} but {folder / file} is missing")
    if config.hearing_decoder:
        check_safetensors(folder / config.hearing_decoder)
    return config


def load_speech_side(model: SpeechLLM, folder: Path) -> None:
    """The adapter's weights, any fine-tuned encoder layers and a fine-tuned hearing decoder saved in
    ``folder`` into ``model``."""
    model.adapter.load_state_dict(load_tensors(folder / ADAPTER_FILE))
    if model.config.hearing_decoder:
        model.whisper.load_decoder(folder / model.config.hearing_decoder)
    layers = model.config.encoder_trainable_layers
    if layers:
        weights = folder / ENCODER_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: config.json names fine-tuned encoder layers but {weights} "
                                    "is missing")
        model.encoder.top_layers(layers).load_state_dict(load_tensors(weights))


def _pipeline(folder: Path) -> str:
    try:
        return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("pipeline", "adapter")
    except (OSError, json.JSONDecodeError, AttributeError):
        return "adapter"  # check_speechlm_files says what is wrong


def _load_transcript_pipeline(folder: Path, device):
    from speechllm.speechlm.cascade import TranscriptSpeechLLM

    return TranscriptSpeechLLM.from_folder(folder, device)


# speech-LLMs that are not encoder -> adapter -> LLM, by config.json's "pipeline"
PIPELINES = {"transcript": _load_transcript_pipeline}


def load_speechlm(folder: str | Path, device: str | torch.device | None = None, encoder=None, llm=None,
                  tokenizer=None) -> SpeechLLM:
    """The model saved in ``folder`` (in eval mode). ``encoder``/``llm``+``tokenizer`` may be given
    already loaded (they must be the ones config.json names); otherwise they load by name."""
    folder = Path(folder)
    pipeline = _pipeline(folder)
    if pipeline in PIPELINES:
        return PIPELINES[pipeline](folder, device)
    config = check_speechlm_files(folder)  # a damaged folder fails here, before the LLM loads
    # kernels are chosen once the LoRA weights are in: before, compacted int4 codes would be unpacked
    # again for every layer peft wraps and every state_dict it reads
    model = SpeechLLM.build(config, encoder=encoder, llm=llm, tokenizer=tokenizer, prepare=llm is not None)
    load_speech_side(model, folder)
    model.loaded_from(folder)
    if config.lora is not None:
        from peft import set_peft_model_state_dict

        weights = folder / LORA_DIR / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: config.json names LoRA but {weights} is missing")
        result = set_peft_model_state_dict(model.llm, load_tensors(weights))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{weights}: unexpected LoRA weights, e.g. {unexpected[0]}")
    if device is not None:
        model = model.to(device)
    if llm is None and config.quant not in (None, "none", "fp32"):
        from speechllm.llm import prepare_kernels

        prepare_kernels(model.llm)
    return model.eval()
