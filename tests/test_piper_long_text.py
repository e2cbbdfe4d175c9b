"""Long text through Piper's phonemizer: the sentence and clause structure survives whatever
espeak-ng does, every chunk handed to the voice is bounded, and synthesis goes chunk by chunk."""

import os
import re
import shutil
import stat

import numpy as np
import pytest

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

# ordinary prose with what makes espeak-ng split clauses its own way: dashes, ellipses,
# abbreviations, times, quotes, numbers
PROSE = (
    "The old harbour town woke slowly that morning, as it always did in late autumn. Fishermen hauled "
    "their nets along the quay, calling to one another over the gulls; the bakery had been open since five. "
    "Mr. Hale, who kept the lighthouse, said the ferry would leave at 3:15 p.m. sharp -- though nobody "
    "believed him. \"Why now?\" Anna asked... She did not know, and she was not sure she wanted to. "
    "At the end of the pier she stopped: the wind was cold, but it cleared her head. Somewhere a bell rang "
    "for the morning service, and a dog barked twice -- then fell silent. Some things, she told herself, "
    "could be mended; others could only be forgiven. The tide came in, slow and patient, covering 1,024 "
    "rocks one by one! "
)


def long_prose(n_chars: int) -> str:
    return (PROSE * (n_chars // len(PROSE) + 1))[:n_chars].rsplit(" ", 1)[0]


def sentence_count(text: str) -> int:
    """Sentence ends (not after "Mr."), plus an unfinished last sentence."""
    ends = re.findall(r"(?<!\bMr)[.!?][\"')\]]?(?=\s|$)", text)
    return len(ends) + (re.search(r"[.!?][\"')\]]?$", text) is None)


@needs_espeak
@pytest.mark.parametrize("n_chars", [1100, 50_000])
def test_long_prose_phonemizes_into_bounded_sentences_with_their_pauses(n_chars):
    from speechllm.tts.piper import MAX_PHONEMES, phonemize

    text = long_prose(n_chars)
    chunks = phonemize(text)
    assert max(len(c) for c in chunks) <= MAX_PHONEMES
    # one chunk per sentence (none of these sentences needs splitting), each ending on its pause
    assert len(chunks) == sentence_count(text)
    assert sum(c[-1] in ".!?" for c in chunks) >= len(chunks) - 1
    commas = sum(c.count(",") for c in chunks)
    assert commas >= 0.9 * text.count(", ")  # clause pauses kept (the 1,024 is read as a number)
    assert sum(c.count(";") for c in chunks) == text.count("; ")
    assert all(c == c.strip() and "  " not in c for c in chunks)


@needs_espeak
def test_an_endless_sentence_is_cut_at_clauses_then_words():
    from speechllm.tts.piper import phonemize

    words = "the quick brown fox jumps over the lazy dog and"
    clauses = ", ".join([words] * 40) + " " + " ".join([words] * 60) + "."
    chunks = phonemize(clauses, max_chars=120)
    assert len(chunks) > 10 and all(len(c) <= 120 for c in chunks)
    assert chunks[0].endswith(",") and chunks[-1].endswith(".")
    def bare(phonemes):  # words without punctuation and stress (a sentence's last words stress differently)
        return [w.strip(",.").replace("ˈ", "").replace("ˌ", "") for w in phonemes.split()]

    vocabulary = set(bare(phonemize(words)[0]))
    assert all(w in vocabulary for c in chunks for w in bare(c))  # cut between words, never inside
    one_word = phonemize("a" * 1000, max_chars=50)
    assert len(one_word) > 1 and all(len(c) <= 50 for c in one_word)


class _RecordingSession:
    """Stands in for onnxruntime: records the length of each input, returns 10 samples per id."""

    def __init__(self):
        self.lengths = []

    def run(self, _, feed):
        n = int(feed["input_lengths"][0])
        self.lengths.append(n)
        return [np.zeros((1, 1, 10 * n), dtype=np.float32)]


@needs_espeak
def test_long_text_is_synthesised_chunk_by_chunk():
    from speechllm.tts.piper import MAX_PHONEMES, PiperConfig, PiperVoice

    symbols = sorted(set("^$_ ,.;:!?\"'") | set(
        "abcdefghijklmnopqrstuvwxyzæçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢˈˌːˑ̩θχᵻ"))
    voice = PiperVoice.__new__(PiperVoice)
    voice.config = PiperConfig(22050, "en-us", 0.667, 1.0, 0.8, 1, {s: [i] for i, s in enumerate(symbols)})
    voice.session, voice._inputs = _RecordingSession(), {"input", "input_lengths", "scales"}
    text = long_prose(20_000)
    chunks = voice.synthesize_chunks(text)
    first = next(chunks)
    assert len(voice.session.lengths) == 1 and first.size == 10 * voice.session.lengths[0]  # lazily
    rest = list(chunks)
    assert len(rest) + 1 == sentence_count(text)
    assert max(voice.session.lengths) <= 2 * MAX_PHONEMES + 3  # ^ _ (p _)* $
    assert voice.synthesize(text).size == 10 * sum(voice.session.lengths[: len(rest) + 1])


def test_synthesizer_scratch_files_are_private_and_unpredictable():
    from speechllm.tts import speakers as voices

    a, b = voices._scratch_file(), voices._scratch_file()
    try:
        assert a != b and str(os.getpid()) not in a.name
        for path in (a, b):  # created exclusively, readable by us alone
            info = path.lstat()
            assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.getuid()
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


@pytest.mark.parametrize("speaker", ["espeak:en-us", "flite:slt"])
def test_synthesizers_still_write_through_their_scratch_files(speaker):
    from speechllm.tts import speakers as voices

    if shutil.which(speaker.split(":")[0].replace("espeak", "espeak-ng")) is None:
        pytest.skip(f"{speaker} not installed")
    audio = voices.synthesize(voices.Speaker.parse(speaker), "Hello there.")
    assert 0.3 < len(audio) / 16000 < 3.0
