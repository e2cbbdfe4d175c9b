"""Durable, atomic files and folders: the one place the project writes a file that must never be
seen half written.

Every writer here puts the data under a hidden temporary name beside the target, flushes it to the
disk, renames it into place and flushes the folder, so that a reader, a crash or a power cut sees
either the old file or the whole new one, never a half file or a name pointing at nothing:
:func:`atomic_open` (a file object), :func:`atomic_path` (a temporary name, for writers that take a
file name), :func:`atomic_write_bytes` / ``_text`` / ``_json``, :func:`atomic_save_tensors`, and
for folders :func:`atomic_folder` / :func:`replace_folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Make renames and new names in ``folder`` durable; not every platform lets a folder be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Every file and folder under ``folder`` (and it) durable: before renaming a finished folder."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


# ---------------------------------------------------------------- atomic writes


def temp_name(path: str | Path, keep_suffix: bool = False) -> Path:
    """A hidden, unique name beside ``path`` (same folder, so the final rename is atomic); with
    ``keep_suffix`` it ends in ``path``'s suffix (for writers that choose a format by it)."""
    path = Path(path)
    tag = uuid.uuid4().hex[:12]
    if keep_suffix:
        return path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")
    return path.with_name(f".{path.name}.{tag}.tmp")


@contextmanager
def atomic_path(path: str | Path, durable: bool = True, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary name beside ``path`` for a writer that takes a file name (safetensors, soundfile,
    ``save_pretrained``...): once the block ends the file is fsynced and renamed onto ``path``; on
    any error the old ``path`` stays as it was and the temporary file is removed."""
    path = Path(path)
    tmp = temp_name(path, keep_suffix)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", durable: bool = True, **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing, atomically: the file goes to a temporary name, is flushed (and fsynced
    when ``durable``) and renamed onto ``path`` once the block ends; an error keeps the old file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files ('w' or 'wb'), not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, durable=False) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
    if durable:
        fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    with atomic_open(path, "w", durable=durable, newline="\n") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, durable: bool = True, **dump: Any) -> None:
    """``obj`` as JSON (``dump``: json.dumps options, e.g. ``indent=2``), ending in a newline."""
    atomic_write_text(path, json.dumps(obj, **dump) + "\n", durable=durable)


def atomic_save_tensors(tensors: dict[str, Any], path: str | Path,
                        metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (tensors moved to the CPU, made contiguous), written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)


# ---------------------------------------------------------------- atomic folders


def replace_folder(new: str | Path, final: str | Path) -> None:
    """Move the finished folder ``new`` to ``final``, replacing what was there: ``new`` is made
    durable first, and what ``final`` held is renamed away before it is deleted, so a crash never
    leaves a half-deleted folder under the final name."""
    new, final = Path(new), Path(final)
    fsync_tree(new)
    old = temp_name(final)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``final`` to fill; once the block ends it replaces ``final``
    whole (:func:`replace_folder`); on any error it is deleted and ``final`` stays as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- checked reads


def check_safetensors(path: str | Path) -> None:
    """The file's header parses and agrees with its size (a truncated or overwritten file fails);
    no tensor is read. ``ValueError`` names the file and the reason; a missing file is
    ``FileNotFoundError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # SafetensorError: header too large, incomplete metadata, ...
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def load_tensors(path: str | Path) -> dict[str, Any]:
    """``safetensors.torch.load_file`` with :func:`check_safetensors`'s errors."""
    from safetensors.torch import load_file

    check_safetensors(path)
    return load_file(path)


def tensors_metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's metadata (its header's ``__metadata__``; empty when it has none)."""
    from safetensors import safe_open

    check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object file; ``ValueError`` naming the file when it is not one (cut short, garbled)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt JSON file ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: corrupt JSON file (a {type(document).__name__}, not an object)")
    return document
