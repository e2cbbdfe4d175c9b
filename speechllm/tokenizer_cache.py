"""A cached model folder's tokenizer, built straight from its ``tokenizer.json``.

``AutoTokenizer.from_pretrained`` on a large vocabulary (Gemma 3: 262k tokens, 515k merges) parses
``tokenizer.json`` several times in Python and rebuilds the backend from its vocabulary and merges:
seconds per start. The ``tokenizers`` library parses the same file once, in Rust, in a fraction of that.

``load_tokenizer(folder)`` loads the usual way the first time, builds the direct one beside it and keeps
it only if the two agree on everything a caller sees: the backend's serialization, the special tokens and
their ids, the added tokens, padding and truncation sides, the chat template, and the ids and decodes of
probe texts (accents, emoji, scripts, whitespace, special tokens inline, a batch, the chat template's
output). The recipe (class and arguments) is then written to ``speechllm-tokenizer.json`` in the folder,
keyed by the SHA-256 of the folder's tokenizer files and the transformers and tokenizers versions, so a
changed file or library is checked again. Later loads follow the recipe; a folder whose direct tokenizer
differs is recorded as such and keeps the usual route.

Meant for folders this package owns (the converted GGUFs in the cache): the recipe is written into them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .files import atomic_write_json

STAMP = "speechllm-tokenizer.json"
_WEIGHTS = {".safetensors", ".bin", ".gguf", ".pt", ".pth"}
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "sep_token", "cls_token")
_SPECIAL_LISTS = ("extra_special_tokens", "additional_special_tokens")

# texts both tokenizers must encode and decode alike (the tests use them too)
PROBES = (
    "Hello world.",
    "Mi hermano trabaja en un hospital grande.",
    "¿A qué hora sale el tren para Madrid? Añádelo, pingüino: ñandú, acción, über.",
    "Spanish: Y dijo Dios: Sea la luz; y fué la luz.\nEnglish:",
    "emoji 😀🎉👍🏽 and flags 🇪🇸 mixed in",
    "日本語のテキストと中文 and Ελληνικά, русский, العربية",
    "  leading spaces, double  spaces and trailing   ",
    "tabs\tand\nnew\n\nlines\r\nhere",
    "numbers 1234567890 3.14159 -42 1e-5",
    "code: def f(x): return {'a': [1, 2]} # comment",
    "<bos>special tokens inline<eos> <pad> <|im_start|>user<|im_end|>",
    "",
)
_CHAT = [{"role": "user", "content": "¿Qué hora es? 😀"}, {"role": "assistant", "content": "Son las tres."},
         {"role": "user", "content": "Gracias"}]


def tokenizer_key(folder: Path) -> str:
    """SHA-256 of the folder's non-weight files (names and bytes) and the tokenizer libraries' versions."""
    import tokenizers
    import transformers

    digest = hashlib.sha256(f"transformers {transformers.__version__} tokenizers {tokenizers.__version__}"
                            .encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name == STAMP or path.suffix in _WEIGHTS or path.name.startswith("."):
            continue
        digest.update(f"\0{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def load_tokenizer(folder: str | Path) -> Any:
    """The folder's tokenizer: by its recorded recipe when one was checked, else the usual way (and then
    checked and recorded, see the module doc)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    key = tokenizer_key(folder)
    stamp = _read_stamp(folder)
    if stamp.get("key") == key and stamp.get("recipe"):
        return build_tokenizer(folder, stamp["recipe"])
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if stamp.get("key") != key:
        recipe = checked_recipe(folder, tokenizer)
        try:
            atomic_write_json(folder / STAMP, {"key": key, "recipe": recipe}, durable=False, indent=1)
        except OSError:  # a read-only folder: the next start checks again
            pass
    return tokenizer


def _read_stamp(folder: Path) -> dict:
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def recipe_of(tokenizer: Any) -> dict | None:
    """Class and arguments that rebuild ``tokenizer`` around its folder's ``tokenizer.json``."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return None
    init = tokenizer.init_kwargs
    kwargs: dict[str, Any] = {k: str(init[k]) for k in _SPECIAL if init.get(k) is not None}
    kwargs.update({k: [str(t) for t in init[k]] for k in _SPECIAL_LISTS if init.get(k)})
    kwargs.update(padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
                  model_max_length=tokenizer.model_max_length,
                  model_input_names=list(tokenizer.model_input_names),
                  clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
                  split_special_tokens=tokenizer.split_special_tokens, chat_template=tokenizer.chat_template)
    return {"class": type(tokenizer).__name__, "kwargs": kwargs}


def build_tokenizer(folder: str | Path, recipe: dict) -> Any:
    """The tokenizer a recipe describes, its backend read from ``folder/tokenizer.json`` in one pass."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    cls = tokenizer_class_from_name(recipe["class"]) or PreTrainedTokenizerFast
    return cls(tokenizer_file=str(Path(folder) / "tokenizer.json"), name_or_path=str(folder),
               **recipe["kwargs"])


def checked_recipe(folder: Path, tokenizer: Any) -> dict | None:
    """``tokenizer``'s recipe if the tokenizer it builds behaves the same, else None."""
    recipe = recipe_of(tokenizer)
    if recipe is None:
        return None
    try:
        direct = build_tokenizer(folder, recipe)
    except Exception:  # noqa: BLE001  (a class that cannot be built this way keeps the usual route)
        return None
    return recipe if behaviour(direct) == behaviour(tokenizer) else None


def behaviour(tokenizer: Any) -> dict:
    """Everything about a tokenizer that callers see, as comparable values."""
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    added = {i: (t.content, t.special, t.lstrip, t.rstrip, t.normalized, t.single_word)
             for i, t in tokenizer.added_tokens_decoder.items()}
    probes = []
    for text in PROBES:
        ids = tokenizer(text).input_ids
        plain = tokenizer(text, add_special_tokens=False).input_ids
        probes.append((ids, plain, tokenizer.convert_ids_to_tokens(ids), tokenizer.decode(ids),
                       tokenizer.decode(ids, skip_special_tokens=True)))
    batch = None
    if tokenizer.pad_token is not None:
        batch = tokenizer(list(PROBES[:4]), padding=True)
        batch = (batch.input_ids, batch.attention_mask)
    chat = None
    if tokenizer.chat_template is not None:
        text = tokenizer.apply_chat_template(_CHAT, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.apply_chat_template(_CHAT, add_generation_prompt=True)
        chat = (text, list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return {
        "backend": tokenizer.backend_tokenizer.to_str(), "len": len(tokenizer),
        "vocab_size": tokenizer.vocab_size, "special": special, "added": added,
        "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id, tokenizer.all_special_ids],
        "settings": [tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_max_length,
                     list(tokenizer.model_input_names), tokenizer.clean_up_tokenization_spaces,
                     tokenizer.split_special_tokens, tokenizer.chat_template, tokenizer.name_or_path,
                     getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None)],
        "probes": probes, "batch": batch, "chat": chat,
    }
