"""speechllm.files: the one module for atomic files and folders."""

import json

import pytest
import torch
from safetensors.torch import load_file

from speechllm.files import (
    atomic_folder,
    atomic_open,
    atomic_path,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_writers_replace_whole_files_and_leave_nothing_beside(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    atomic_write_text(tmp_path / "a.txt", "new\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=2)
    atomic_save_tensors({"w": torch.arange(3.0)}, tmp_path / "d.safetensors")
    assert (tmp_path / "a.txt").read_text() == "new\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert load_file(tmp_path / "d.safetensors")["w"].tolist() == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.safetensors"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_open(target) as f:
            f.write("new, but not all of it")
            raise RuntimeError("half way")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("also new")
        raise RuntimeError("again")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(target, "a"):
            pass


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("1")
    with pytest.raises(OSError):
        with atomic_folder(final) as tmp:
            (tmp / "weights").write_text("2")
            raise OSError("disk full")
    assert (final / "weights").read_text() == "1"
    with atomic_folder(final) as tmp:
        (tmp / "other").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
