"""The translation memory: nearest pairs by idf-weighted shared words, its file format."""

from __future__ import annotations

import gzip

import pytest

from speechllm.speechlm.memory import TranslationMemory

PAIRS = [
    ("Y dijo Dios: Sea la luz.", "God said, Let there be light."),
    ("Y vió Dios que la luz era buena.", "God saw the light, and saw that it was good."),
    ("El rey de Egipto murió.", "The king of Egypt died."),
    ("Y la tierra estaba desordenada y vacía.", "The earth was formless and empty."),
]


def test_rare_shared_words_outrank_common_ones():
    memory = TranslationMemory(PAIRS)
    assert memory.nearest("El rey de la ciudad", 1) == [PAIRS[2]]  # "rey" is rarer than "la"/"de"
    nearest = memory.nearest("Dios vió la luz", 2)
    assert set(nearest) == {PAIRS[0], PAIRS[1]} and nearest[0] == PAIRS[1]  # shares "vió" as well
    assert memory.nearest("Buenos días, señor", 3) == []  # nothing in common
    assert memory.nearest("Dios vió la luz", 4, min_score=100.0) == []


def test_reversed_reads_target_to_source():
    back = TranslationMemory(PAIRS).reversed()
    assert back.nearest("the king died", 1) == [(PAIRS[2][1], PAIRS[2][0])]


@pytest.mark.parametrize("name", ["memory.tsv", "memory.tsv.gz"])
def test_write_then_read_round_trips(tmp_path, name):
    TranslationMemory(PAIRS).write(tmp_path / name)
    assert TranslationMemory.read(tmp_path / name).pairs == PAIRS
    if name.endswith(".gz"):
        assert gzip.decompress((tmp_path / name).read_bytes()).decode().count("\n") == len(PAIRS)


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("uno\tone\n\ndos without a tab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.tsv:3: expected 'source<TAB>target'"):
        TranslationMemory.read(path)
