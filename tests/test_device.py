"""The one device picker (speechllm.device): what ``auto`` means, and the one-line errors of ``--device``."""

from __future__ import annotations

import pytest
import torch

from speechllm.device import check_device, pick_device


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_is_the_gpu_when_one_is_visible_else_the_cpu(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    for device in (None, "auto"):
        assert pick_device(device) == torch.device("cuda" if cuda else "cpu")
        # a distributed worker's local rank picks its own GPU (speechllm.train's Trainer)
        assert pick_device(device, index=1) == torch.device("cuda:1" if cuda else "cpu")


def test_a_named_device_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cpu", index=1) == torch.device("cpu")
    assert pick_device("cuda:0", index=1) == torch.device("cuda:0")


@pytest.mark.parametrize("device, message", [("gpu", "not a device"), ("tpu:0", "not a device|unsupported")])
def test_a_bad_device_is_one_line_naming_the_flag(device, message):
    with pytest.raises(ValueError, match=message) as err:
        check_device(device, flag="--device")
    assert str(err.value).startswith(f"--device {device}") and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_fails_before_any_model_loads():
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_device("cuda")
    check_device("auto")
    check_device("cpu")
