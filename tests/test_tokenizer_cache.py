"""A cached folder's tokenizer is built straight from tokenizer.json once checked equal to the usual one."""

import json

import pytest
from tiny_models import make_tiny_llm
from transformers import AutoTokenizer

from speechllm import tokenizer_cache
from speechllm.tokenizer_cache import PROBES, STAMP, load_tokenizer

TEXTS = [*PROBES, "transcribe the speech", "hello world <|im_end|>", "Él comió jamón y piña en el café.",
         "🙂 " * 5, "a\u00a0non-breaking space and a zero\u200bwidth one"]
CHAT = [{"role": "user", "content": "¿Dónde está la estación? 🚉"}]


def make_tiny_gemma(folder):
    """A GemmaTokenizer (byte-fallback BPE with ▁ for spaces) over a few pieces, saved like a real one."""
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{b:02X}>" for b in range(256)),
              "▁", "h", "o", "l", "a", "ho", "la", "hola", "▁hola", "m", "u", "n", "d", "mu", "mun", "do",
              "mundo"]
    merges = [("h", "o"), ("l", "a"), ("ho", "la"), ("▁", "hola"), ("m", "u"), ("mu", "n"), ("d", "o"),
              ("mun", "do")]
    tokenizer = GemmaTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=merges)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(params=["llama-bpe", "gemma"])
def folder(request, tmp_path):
    if request.param == "gemma":
        return make_tiny_gemma(tmp_path / "gemma")
    return make_tiny_llm(tmp_path / "llm")


def assert_same_tokenizer(new, old):
    assert type(new) is type(old)
    for text in TEXTS:
        ids = old(text).input_ids
        assert new(text).input_ids == ids, text
        assert new(text, add_special_tokens=False).input_ids == old(text, add_special_tokens=False).input_ids
        assert new.decode(ids) == old.decode(ids)
        assert new.decode(ids, skip_special_tokens=True) == old.decode(ids, skip_special_tokens=True)
    assert [new.bos_token_id, new.eos_token_id, new.pad_token_id, new.unk_token_id] == \
           [old.bos_token_id, old.eos_token_id, old.pad_token_id, old.unk_token_id]
    assert new.all_special_ids == old.all_special_ids and len(new) == len(old)
    assert new.padding_side == old.padding_side and new.chat_template == old.chat_template
    if old.chat_template:
        assert new.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
               old.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_recorded_tokenizer_equals_the_usual_one(folder, monkeypatch):
    usual = AutoTokenizer.from_pretrained(str(folder))
    first = load_tokenizer(folder)  # the usual route, checked and recorded
    stamp = json.loads((folder / STAMP).read_text())
    assert stamp["recipe"]["class"] == type(usual).__name__
    assert_same_tokenizer(first, usual)

    def no_usual_route(*args, **kwargs):
        raise AssertionError("a recorded folder must not take the usual route")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_usual_route)
    again = load_tokenizer(folder)
    assert_same_tokenizer(again, usual)
    assert again.name_or_path == usual.name_or_path


def test_a_direct_tokenizer_that_differs_is_not_recorded(folder, monkeypatch):
    from tokenizers import normalizers

    build = tokenizer_cache.build_tokenizer

    def lowercasing(folder, recipe):  # a direct route that would give other ids for capitals
        tokenizer = build(folder, recipe)
        tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
        return tokenizer

    monkeypatch.setattr(tokenizer_cache, "build_tokenizer", lowercasing)
    usual = AutoTokenizer.from_pretrained(str(folder))
    assert_same_tokenizer(load_tokenizer(folder), usual)
    assert json.loads((folder / STAMP).read_text())["recipe"] is None
    assert_same_tokenizer(load_tokenizer(folder), usual)  # recorded as such: the usual route again


def test_changed_tokenizer_files_are_checked_again(tmp_path):
    folder = make_tiny_llm(tmp_path / "llm")
    load_tokenizer(folder)
    key = json.loads((folder / STAMP).read_text())["key"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["padding_side"] = "left"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    changed = load_tokenizer(folder)
    stamp = json.loads((folder / STAMP).read_text())
    assert stamp["key"] != key and stamp["recipe"]["kwargs"]["padding_side"] == "left"
    assert changed.padding_side == "left" and load_tokenizer(folder).padding_side == "left"


def test_read_only_folder_still_loads(tmp_path, monkeypatch):
    folder = make_tiny_llm(tmp_path / "llm")

    def refuse(*args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(tokenizer_cache, "atomic_write_json", refuse)
    assert_same_tokenizer(load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder)))
    assert not (folder / STAMP).exists()
