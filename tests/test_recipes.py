import argparse
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechllm.data_recipes import texts, voices
from speechllm.data_recipes.recipes import RECIPES, SPLITS, plan, split_of
from speechllm.data_recipes.synth import build, register_synth, run_synth
from speechllm.manifest import read_manifest
from speechllm.text_normalize import normalize
from speechllm.zoo import ModelNotFoundError, resolve


def _have_piper() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        resolve("piper-joe", download=False)
    except ModelNotFoundError:
        return False
    return True


_TOOLS = ("espeak-ng", "flite", "diatheke")
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in _TOOLS)
    or not texts.QUIZ_DIR.is_dir()
    or not texts.FORTUNE_DIR.is_dir(),
    reason="needs espeak-ng, flite, diatheke (sword-text-web, sword-text-sparv), bsdgames and fortunes",
)
needs_piper = pytest.mark.skipif(
    not _have_piper(), reason="needs the piper-joe voice + onnxruntime (test speaker)"
)


# ---------------------------------------------------------------- pure parts


def test_speaker_ids_round_trip():
    ids = ("espeak:en-us+f3:s160:p45:g2", "flite:slt", "piper:joe", "espeak:es-419+m7:s150:p50:g0")
    for sid in ids + ("flite:rms:v115:h190:d95",):
        assert voices.Speaker.parse(sid).id == sid
    assert voices.Speaker.parse("espeak:es+m1:s150:p50:g0").lang == "es"
    converted = voices.Speaker.parse("flite:rms:v115:h190:d95")
    assert converted.converted and (converted.formant, converted.f0, converted.duration) == (115, 190, 95)
    assert not voices.Speaker.parse("flite:rms").converted
    with pytest.raises(ValueError, match="unknown voice engine"):
        voices.Speaker.parse("festival:kal")
    with pytest.raises(ValueError, match="bad speaker id 'flite:rms:x12'"):
        voices.Speaker.parse("flite:rms:x12")


def test_converted_grid_spans_new_speakers():
    base = [voices.Speaker("flite", "rms"), voices.Speaker("flite", "kal16")]
    grid = voices.converted_grid(base, 60, seed=0)
    assert len({s.id for s in grid}) == 60 and grid == voices.converted_grid(base, 60, seed=0)
    assert {(s.engine, s.voice) for s in grid} == {("flite", "rms"), ("flite", "kal16")}
    assert all(88 <= s.formant <= 122 and 85 <= s.f0 <= 240 and 90 <= s.duration <= 110 for s in grid)
    low = [s.f0 for s in grid if s.formant < 100]
    high = [s.f0 for s in grid if s.formant > 110]
    assert np.median(high) > np.median(low), "shorter vocal tracts go with higher voices"
    plain = voices.estimate_seconds(base[0], "x" * 150)
    assert voices.estimate_seconds(voices.Speaker("flite", "rms", duration=110), "x" * 150) == pytest.approx(
        plain * 1.1
    )


def _median_f0(audio: np.ndarray) -> float:
    """Autocorrelation pitch of the voiced 40 ms frames, Hz."""
    frames = [audio[i : i + 640] for i in range(0, len(audio) - 640, 320)]
    f0s = []
    for f in frames:
        f = f - f.mean()
        if np.sqrt(np.mean(f**2)) < 0.02:
            continue
        ac = np.correlate(f, f, "full")[len(f) - 1 :]
        lag = 40 + int(np.argmax(ac[40:200]))  # 80-400 Hz
        if ac[lag] > 0.4 * ac[0]:
            f0s.append(16000 / lag)
    return float(np.median(f0s))


@pytest.mark.skipif(importlib.util.find_spec("parselmouth") is None, reason="needs praat-parselmouth")
def test_convert_moves_pitch_and_pace():
    t = np.arange(16000 * 2) / 16000
    vowel = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, 12)).astype(np.float32) * 0.2
    out = voices.convert(vowel, formant=1.15, f0=200.0, duration=0.9)
    assert out.dtype == np.float32 and len(out) == pytest.approx(len(vowel) * 0.9, rel=0.02)
    assert _median_f0(vowel) == pytest.approx(110, rel=0.05)
    assert _median_f0(out) == pytest.approx(200, rel=0.08)


def test_conversion_without_parselmouth_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "parselmouth" else real(name, *a)
    )
    monkeypatch.setattr(voices.ENGINES["flite"], "missing", lambda voice: None)
    voices.check_speakers([voices.Speaker("flite", "rms")])
    with pytest.raises(voices.MissingToolError, match="pip install praat-parselmouth"):
        voices.check_speakers([voices.Speaker.parse("flite:rms:v110:h150:d100")])


def test_parse_wav_tolerates_streamed_headers():
    pcm = (np.sin(np.arange(800) / 5) * 16000).astype("<i2")
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 22050, 44100, 2, 16)
    data = b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", 0x7FFFFFFF)
    audio, rate = voices.parse_wav(data + pcm.tobytes())
    assert rate == 22050 and len(audio) == 800 and audio.dtype == np.float32
    assert np.allclose(audio * 32768, pcm)


def test_missing_tools_give_one_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    speakers = [voices.Speaker.parse("espeak:en-us+f3:s160:p45:g2"), voices.Speaker("flite", "slt")]
    with pytest.raises(voices.MissingToolError) as info:
        voices.check_speakers(speakers)
    message = str(info.value)
    assert "apt-get install espeak-ng" in message and "apt-get install flite" in message


def test_quiz_patterns():
    assert texts.expand_quiz("{G{eorge} }Washington") == ["George Washington", "G Washington", "Washington"]
    assert texts.expand_quiz("Cal{if{ornia}}|CA")[0] == "California"
    assert "CA" in texts.expand_quiz("Cal{if{ornia}}|CA")
    assert texts.expand_quiz("Saint Barth['e|e'|e]lemy") == [
        "Saint Barth'elemy",
        "Saint Barthe'lemy",
        "Saint Barthelemy",
    ]
    assert texts.expand_quiz("a\\|b|c") == ["a|b", "c"]
    assert texts.expand_quiz("forget{-| }me") == ["forget-me", "forget me", "forgetme"]


def test_quiz_table_rows(tmp_path):
    path = tmp_path / "t"
    path.write_text("one:two\nthree:\\\nfour\n\n", encoding="latin-1")
    assert texts.read_quiz_table(path) == [["one", "two"], ["three", "four"]]


def test_parse_osis():
    raw = (
        'Genesis 1:1: <w savlm="s:1">In</w> <w>the</w> <w>beginning</w>, <w>God</w><w>created</w> it.\n'
        '<title type="psalm">A leaked title.</title> <l level="1"/>Genesis 1:2: <w>The earth</w>\n'
        "was empty.\n"
        "II Kings 2:3: Go up, you baldy!\n(engWEB2015eb)\n"
    )
    assert texts.parse_osis(raw) == {
        "Genesis 1:1": "In the beginning, God created it.",
        "Genesis 1:2": "The earth was empty.",
        "II Kings 2:3": "Go up, you baldy!",
    }


def test_fortune_cleaning():
    assert texts.clean_fortune("You can observe a lot just by watching.  -- Yogi Berra") == (
        "You can observe a lot just by watching."
    )
    assert texts.clean_fortune("FEELINGS are cascading over me!!!") == "feelings are cascading over me!"
    assert texts.clean_fortune("Two\nlines here and more") is None
    assert texts.clean_fortune("Too short.") is None
    assert texts.clean_fortune("Visit http://example.com for the answer now") is None


def test_generated_texts_are_spoken_form():
    rng = np.random.default_rng(0)
    for _ in range(50):
        qa = texts.passage_qa(rng)
        assert qa.answer in qa.passage
        sum_ = texts.arithmetic(rng)
        assert sum_.answer and not any(ch.isdigit() for ch in sum_.question + sum_.answer)
    assert not any(ch.isdigit() for t in texts.generated_sentences()[:500] for ch in t)


def test_grounded_passages_answer_from_the_passage_or_say_it_does_not():
    """`passages`: an answered question's answer is a span of the passage; an unanswered one is about
    something the passage does not say (none of its own questions), and all three unanswered kinds occur."""
    from speechllm.data_recipes import passages

    rng = np.random.default_rng(1)
    kinds = []
    for _ in range(600):
        qa, kind = passages.grounded_qa(rng)
        kinds.append(kind)
        assert not any(ch.isdigit() for ch in qa.passage + qa.question + qa.answer)
        assert ".." not in qa.passage.replace("a.m.", "").replace("p.m.", "")
        if kind == "answered":
            assert qa.answer in qa.passage and qa.answer != passages.NOT_STATED
        else:
            assert qa.answer == passages.NOT_STATED
    assert set(kinds) == {"answered", "near", "elsewhere", "generic"}
    assert 0.25 < 1 - kinds.count("answered") / len(kinds) < 0.45
    fact = passages.FACTS[0](rng)  # a fact's near misses are not among the questions it answers
    assert not set(fact.near_misses) & {q for q, _ in fact.questions}
    item = next(i for i in RECIPES["passages"].items(0) if i.source.startswith("unanswered"))
    assert item.task == "sqa" and item.prompt and item.answer == passages.NOT_STATED


def test_long_passages_tell_five_to_nine_facts_each_about_other_people():
    from speechllm.data_recipes import passages

    rng = np.random.default_rng(2)
    for _ in range(100):
        facts = passages._facts(rng, passages.LONG)
        told = facts[:-1]
        assert passages.LONG[0] <= len(told) <= passages.LONG[1]
        people = [passages._people(f) for f in told]
        assert sum(map(len, people)) == len(set().union(*people))  # nobody in two facts
    for _ in range(100):
        qa, kind = passages.grounded_qa(rng, passages.LONG)
        assert (qa.answer in qa.passage) if kind == "answered" else qa.answer == passages.NOT_STATED
    item = next(iter(RECIPES["passages-long"].items(0)))
    assert item.task == "sqa" and item.prompt and len(item.say.split()) > 30


def test_split_of_is_stable_and_proportioned():
    assert split_of("Hello, World!") == split_of("hello world")
    assert split_of("It costs $3.") == split_of("It costs three dollars.")
    counts = {s: 0 for s in SPLITS}
    for i in range(20000):
        counts[split_of(f"sentence number {i} of the test")] += 1
    assert 0.04 < counts["test"] / 20000 < 0.06 and 0.04 < counts["dev"] / 20000 < 0.06


@needs_tools
@pytest.mark.parametrize("name", list(RECIPES))
def test_held_out_rules_in_the_plan(name):
    recipe = RECIPES[name]
    items = plan(name, seed=3, hours=1000, max_utterances=2000)
    assert len(items) == 2000
    by_split = {s: [i for i in items if i.split == s] for s in SPLITS}
    assert all(by_split.values()), "every split is represented"
    held = recipe.held_out_speakers
    if name != "tts":
        assert held and {i.speaker.id for i in by_split["test"]} <= held
        assert not held & {i.speaker.id for i in by_split["train"] + by_split["dev"]}
    for field in ("say", "text"):
        train = {normalize(getattr(i, field) or "") for i in by_split["train"]}
        test = {normalize(getattr(i, field) or "") for i in by_split["test"]}
        assert not train & test, f"a test {field} is in train"


@needs_tools
def test_plan_is_deterministic():
    a = plan("sqa", seed=1, hours=0.05)
    assert a == plan("sqa", seed=1, hours=0.05)
    assert [i.say for i in a] != [i.say for i in plan("sqa", seed=2, hours=0.05)]
    assert 0.04 < sum(i.estimate_seconds() for i in a) / 3600 < 0.06


@needs_tools
def test_verse_pairs_align():
    pairs = texts.verse_pairs()
    assert len(pairs) > 30000
    first = pairs[0]
    assert first.ref == "Genesis 1:1" and "beginning" in first.en and "principio" in first.es
    assert not any("Godcreated" in p.en for p in pairs[:50])


@needs_tools
def test_held_out_verses_are_in_no_training_row_and_by_example_rows_never_show_the_verse_itself():
    from speechllm.data_recipes.text_rows import text_rows

    held_out = texts.held_out_verses()
    assert len(held_out) == 250 and all(split_of(v.en) == "test" for v in held_out)
    rows = list(text_rows("st-by-example", 40, seed=0))
    assert not {r["source"] for r in rows} & {f"bible:{v.ref}" for v in held_out}
    with_examples = [r for r in rows if r.get("prompt")]
    assert len(with_examples) > 20
    assert all(" ".join(r["source_text"].split()) not in r["prompt"] for r in with_examples)
    from speechllm.data_recipes.translation_memory import bible_memory  # nor any other test-split verse
    shown = {source for source, _ in bible_memory().pairs}
    assert not any(" ".join(v.es.split()) in shown for v in texts.verse_pairs() if split_of(v.en) == "test")
    assert all(r["prompt"].startswith("Spanish: ") and r["prompt"].count("\nEnglish: ") <= 2
               for r in with_examples)


# ---------------------------------------------------------------- building corpora


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_synth(parser)
    return parser.parse_args(list(argv))


def _build(out: Path, recipe: str = "asr", n: int = 36, seed: int = 0, jobs: int = 2) -> dict:
    args = _args(
        "--recipe",
        recipe,
        "--hours",
        "1",
        "--max-utterances",
        str(n),
        "--shard-size",
        "8",
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--seed",
        str(seed),
        "--quiet",
    )
    assert run_synth(args) == 0
    return json.loads((out / "stats.json").read_text())


def _manifests(out: Path) -> dict[str, bytes]:
    return {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}


@pytest.fixture(scope="module")
def asr_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "asr"
    return out, _build(out)


@needs_tools
@needs_piper
def test_corpus_manifests_and_held_out_rules(asr_corpus):
    out, stats = asr_corpus
    rows = {s: read_manifest(out / f"{s}.jsonl", check_audio=True) for s in SPLITS}
    assert sum(len(r) for r in rows.values()) == stats["utterances"] == 36
    assert all(rows[s] for s in ("train", "test"))
    for split, split_rows in rows.items():
        for row in split_rows:
            assert row.task == "asr" and row.text and row.lang == "en" and row.extra["split"] == split
            assert row.audio.endswith(".flac") and Path(row.audio).is_relative_to(out)
            info = sf.info(row.audio)
            assert info.samplerate == 16000 and info.format == "FLAC"
            assert abs(info.duration - row.duration) < 1e-3
    held = set(stats["held_out_speakers"])
    assert held == {"flite:slt", "flite:awb", "piper:joe"}
    assert {r.speaker for r in rows["test"]} <= held
    assert not held & {r.speaker for r in rows["train"] + rows["dev"]}
    assert not {normalize(r.text) for r in rows["test"]} & {normalize(r.text) for r in rows["train"]}
    assert not list(out.rglob("*.wav")) and not list(out.rglob("*.tmp"))
    for split in SPLITS:
        assert stats["splits"][split]["utterances"] == len(rows[split])
    assert stats["hours"] == pytest.approx(sum(r.duration for v in rows.values() for r in v) / 3600, abs=1e-3)


@needs_tools
@needs_piper
def test_interrupted_shard_is_redone_alone(asr_corpus):
    out, stats = asr_corpus
    before = _manifests(out)
    shards = sorted(p for p in (out / "audio").iterdir() if p.name.startswith("fast-"))
    victim = shards[1]
    # kill-like interruption: no done marker, a file missing, a temp file left behind
    (victim / "done.json").unlink()
    sorted(victim.glob("*.flac"))[-1].unlink()
    (victim / ".asr-9999999.flac.tmp").write_bytes(b"half")
    args = _args(
        "--recipe",
        "asr",
        "--hours",
        "1",
        "--max-utterances",
        "36",
        "--shard-size",
        "8",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--quiet",
    )
    assert run_synth(args) == 0
    again = json.loads((out / "stats.json").read_text())
    assert again["shards"]["built"] == 1 and again["shards"]["reused"] == stats["shards"]["total"] - 1
    assert _manifests(out) == before
    assert not list(victim.glob("*.tmp"))


@needs_tools
@needs_piper
def test_crash_leaves_no_manifest_pointing_at_missing_audio(tmp_path, monkeypatch):
    from speechllm.data_recipes import synth

    out = tmp_path / "crash"
    _build(out, n=12, jobs=1)
    real = synth.synth_shard
    calls = []

    def crash_on_second(job):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "synth_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _build(out, n=12, seed=5, jobs=1)  # another seed: every shard must be redone
    assert not any((out / f"{s}.jsonl").exists() for s in SPLITS) and not (out / "stats.json").exists()
    monkeypatch.setattr(synth, "synth_shard", real)
    stats = _build(out, n=12, seed=5, jobs=1)
    assert stats["shards"]["built"] == stats["shards"]["total"] - 1  # the one finished before the crash stays
    for s in SPLITS:
        read_manifest(out / f"{s}.jsonl", check_audio=True)


@needs_tools
@needs_piper
def test_same_seed_same_corpus(asr_corpus, tmp_path):
    out, _ = asr_corpus
    other = tmp_path / "again"
    _build(other, jobs=1)

    def content(folder):
        return [
            (r.extra["id"], r.text, r.speaker, r.duration)
            for s in SPLITS
            for r in read_manifest(folder / f"{s}.jsonl")
        ]

    assert content(other) == content(out)
    third = tmp_path / "seed1"
    _build(third, n=12, seed=1, jobs=1)
    assert [c[1] for c in content(third)] != [c[1] for c in content(out)][:12]


@needs_tools
@needs_piper
@pytest.mark.parametrize("recipe, n", [("st", 10), ("sqa", 12), ("tts", 5), ("asr-converted", 6)])
def test_other_recipes_build(tmp_path, recipe, n):
    stats = _build(tmp_path / recipe, recipe=recipe, n=n, jobs=1)
    rows = [r for s in SPLITS for r in read_manifest(tmp_path / recipe / f"{s}.jsonl", check_audio=True)]
    assert len(rows) == n and all(r.task == RECIPES[recipe].task for r in rows)
    if recipe == "asr-converted":
        trained_on = [voices.Speaker.parse(r.speaker) for r in rows if r.extra.get("split") != "test"]
        assert trained_on and all(s.converted and s.engine == "flite" for s in trained_on)
    if recipe == "st":
        assert all(r.lang == "es" and r.extra["source_text"] and r.text for r in rows)
        assert all(r.speaker.startswith("espeak:es") for r in rows)
    if recipe == "sqa":
        assert all(r.answer for r in rows)
        assert all(r.answer in r.text for r in rows if r.prompt)  # passage QA: the answer is a span
    if recipe == "tts":
        assert stats["held_out_speakers"] == []


@needs_tools
@needs_piper
def test_a_test_only_build_holds_the_whole_builds_test_rows(asr_corpus, tmp_path):
    out, _ = asr_corpus
    stats = build("asr", tmp_path / "test-only", 1, jobs=1, max_utterances=36, shard_size=8,
                        progress=False, splits=("test",))
    whole = [(r.extra["id"], r.text, r.speaker) for r in read_manifest(out / "test.jsonl")]
    alone = [(r.extra["id"], r.text, r.speaker) for r in read_manifest(tmp_path / "test-only" / "test.jsonl")]
    assert alone == whole and whole
    assert stats.stats["splits"]["train"]["utterances"] == 0
    with pytest.raises(ValueError, match="--splits must name"):
        build("asr", tmp_path / "bad", 1, splits=("holdout",))
