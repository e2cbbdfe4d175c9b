"""Checks every command runs before it loads a model, so a bad argument costs a second, not a
minute of loading followed by a traceback: output paths, ``--device``, ``--to``, model folders
(config.json, safetensors headers), and the library noise ``--quiet`` promises to silence.

Each check raises ``ValueError`` with one line naming the argument and the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from speechllm.device import check_device  # noqa: F401  (the commands' preflight names it)


def _short(value: str, limit: int = 40) -> str:
    """A user's value for an error line: a 50,000-character argument is not echoed whole."""
    return value if len(value) <= limit else value[:limit] + f"... ({len(value):,} characters)"


# ---------------------------------------------------------------- output paths


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (``out.jsonl/x`` cannot be made)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _writable_ancestor(path: Path) -> Path:
    return next((p for p in path.parents if p.exists()), Path("."))


def check_output_file(path: str | Path, flag: str = "--output", example: str = "out.jsonl") -> Path:
    """A file the command may create or replace: not a folder, not under a file, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; name a file in it (e.g. {path / example})")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder")
    folder = _writable_ancestor(path)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path}: permission denied (cannot write in {folder})")
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """A folder the command may create or write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, not a folder")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder")
    folder = path if path.is_dir() else _writable_ancestor(path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: permission denied (cannot write in {folder})")
    return path


# ---------------------------------------------------------------- device and language


def check_language(value: str, flag: str = "--to") -> str:
    """A language the speech-LLM translates into, by code or name in any case (``en``, ``English``);
    returns its name."""
    from speechllm.speechlm.model import LANGUAGES

    key = value.strip().lower()
    for code, name in LANGUAGES.items():
        if key in (code, name.lower()):
            return name
    choices = ", ".join(f"{code} ({name})" for code, name in LANGUAGES.items())
    raise ValueError(f"{flag} {_short(value)!r}: unknown language; choose from {choices}")


# ---------------------------------------------------------------- model folders


def check_json(path: Path) -> dict:
    """A JSON object file, or ``PATH: not valid JSON (line N: reason)``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); the model folder is damaged") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); "
                         "the model folder is damaged") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(document).__name__}")
    return document


def check_safetensors(path: Path) -> None:
    """The file's header and size agree (a truncated or overwritten file fails); no tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as exc:  # SafetensorError: header too large, incomplete metadata, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def check_model_folder(folder: Path, seen: set[Path] | None = None) -> None:
    """Every JSON config and safetensors file of a local model folder is readable; a speech-LLM
    folder's encoder and LLM, when they are local folders too, are checked the same way."""
    seen = set() if seen is None else seen
    if folder.resolve() in seen:
        return
    seen.add(folder.resolve())
    config = folder / "config.json"
    document = check_json(config) if config.is_file() else {}
    for name in ("adapter_config.json", "tokenizer_config.json"):
        for path in (folder / name, folder / "lora" / name):
            if path.is_file():
                check_json(path)
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("lora/*.safetensors")]):
        check_safetensors(path)
    if document.get("format") == "speechllm":
        for key in ("encoder", "llm"):
            part = document.get(key)
            if isinstance(part, str) and Path(part).expanduser().is_dir():
                check_model_folder(Path(part).expanduser(), seen)


def is_speechlm(name: str) -> bool:
    """Whether ``name`` is a zoo speech-LLM or a speech-LLM folder, without importing the model code."""
    from speechllm.zoo import ZOO

    entry = ZOO.get(name)
    if entry is not None:
        return entry.kind == "speech-llm"
    config = Path(name).expanduser() / "config.json"
    try:
        document = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
        return document.get("format") == "speechllm"
    except (ValueError, OSError, AttributeError):
        return False


def check_model(name: str, needs_speechlm: bool, flag: str = "--model", task: str = "") -> None:
    """A model that can load: a local folder's files are intact, a name resolves (zoo, cache,
    bundle); with ``needs_speechlm`` it must be a speech-LLM. Nothing is loaded."""
    from speechllm.zoo import ZOO, resolve

    path = Path(name).expanduser()
    if path.is_dir():
        check_model_folder(path)
    elif path.is_file() and path.suffix == ".json":
        check_json(path)
    if not needs_speechlm:
        resolve(name)  # ModelNotFoundError: every place tried, in one line
        return
    needs = (f"{task!r} needs a speech-LLM ({flag} speechllm-starter or a folder written by "
             "speechllm finetune)")
    entry = ZOO.get(name)
    if entry is not None and entry.kind != "speech-llm":
        kind = "a speech recognition model" if entry.kind == "asr" else f"a {entry.kind} model"
        raise ValueError(f"{name} is {kind}; {needs}")
    if entry is None and not path.exists():
        raise ValueError(f"{flag} {_short(name)}: no such model folder and no zoo speech-LLM of that name; "
                         f"{needs}")
    if entry is not None:
        resolve(name)  # the starter's bundle missing: say where it was looked for
    elif not is_speechlm(name):
        raise ValueError(f"{flag} {name}: not a speech-LLM model folder (no config.json of format "
                         f"'speechllm'); {needs}")


@contextmanager
def naming_model(name: str, flag: str = "--model") -> Iterator[None]:
    """Errors of damaged files the up-front checks cannot see (a zoo bundle's weights, a file
    behind a Hugging Face id) name the model they came from: safetensors' and JSON's own
    messages name no file."""
    try:
        yield
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} {name}: damaged model files (a JSON file: {exc})") from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{flag} {name}: damaged model files (safetensors: {exc})") from exc


# ---------------------------------------------------------------- --quiet


@contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """Under ``--quiet``: no transformers progress bars ("Loading weights", the GGUF importer's
    "Converting and de-quantizing ..." bar, which takes no option). Restored on exit."""
    if not quiet:
        yield
        return
    import tqdm.auto
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    original = tqdm.auto.tqdm

    class Silent(original):  # transformers' GGUF loader binds ``from tqdm.auto import tqdm``
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    import sys

    gguf_module = "transformers.modeling_gguf_pytorch_utils"
    bound = getattr(sys.modules.get(gguf_module), "tqdm", None)
    tqdm.auto.tqdm = Silent
    if bound is not None:
        sys.modules[gguf_module].tqdm = Silent
    try:
        yield
    finally:
        tqdm.auto.tqdm = original
        if gguf_module in sys.modules and getattr(sys.modules[gguf_module], "tqdm", None) is Silent:
            sys.modules[gguf_module].tqdm = bound or original
        if was_enabled:
            hf_logging.enable_progress_bar()
