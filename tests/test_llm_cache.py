"""A GGUF is imported once: later loads read the cached quantized folder."""

import json

import torch
from tiny_models import make_tiny_llm

from speechllm import llm as llm_module
from speechllm.llm import converted_folder, load_llm
from speechllm.tokenizer_cache import STAMP


def test_gguf_import_is_cached_by_content_hash(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechllm.quant.model import QuantConfig, quantize

    monkeypatch.setenv("SPEECHLLM_CACHE", str(tmp_path / "cache"))
    source = make_tiny_llm(tmp_path / "tiny")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in for a GGUF file: only its bytes key the cache")
    imports = []

    def fake_import(file, quant):  # what reading the GGUF would give: an int4 model and its tokenizer
        imports.append((file, quant))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
        quantize(model, QuantConfig(method="rtn", bits=4, group_size=32))
        return model, AutoTokenizer.from_pretrained(str(source))

    monkeypatch.setattr(llm_module, "_import_gguf", fake_import)
    first, tokenizer = load_llm(gguf, quant="auto")
    folder = converted_folder(gguf, "auto")
    assert imports == [(gguf, "auto")] and (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob(".*.tmp"))  # written aside, renamed whole
    second, checked = load_llm(gguf, quant="auto")
    assert len(imports) == 1  # read from the cache
    assert json.loads((folder / STAMP).read_text())["recipe"]  # its tokenizer checked and recorded
    _, recorded = load_llm(gguf, quant="auto")  # built straight from tokenizer.json
    for text in ["hello world", "¿Qué tal? 😀", "<|im_start|>user\nhi<|im_end|>"]:
        assert recorded(text).input_ids == checked(text).input_ids == tokenizer(text).input_ids
    chat = [{"role": "user", "content": "hello world"}]
    assert (recorded.apply_chat_template(chat, tokenize=False)
            == tokenizer.apply_chat_template(chat, tokenize=False))
    x = torch.tensor([tokenizer.encode("hello world")])
    with torch.no_grad():
        assert torch.allclose(first(x).logits, second(x).logits, atol=1e-5)
    gguf.write_bytes(b"another model")  # new content, new key: imported again
    load_llm(gguf, quant="auto")
    assert len(imports) == 2 and converted_folder(gguf, "auto") != folder
