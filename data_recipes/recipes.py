"""The corpus recipes (``asr``, ``st``, ``sqa``, ``tts``): deterministic streams of utterances to
synthesise, each with its text, speaker, task fields and split.

Split rules (held out by text AND by speaker):

- Text: every item has a key (its normalised text; for quiz items the whole quiz row, so
  both directions of one fact go together; texts that share a normalised form share a
  group). ``split_of(key)`` hashes it: 5 % test, 5 % dev, 90 % train, the same in every
  recipe and every build, whatever the seed. A test text is never in train or dev.
- Speaker: each recipe has a training pool (used for train and dev) and a disjoint test
  pool. English test speakers are flite ``slt``, flite ``awb`` and Piper ``joe``; Spanish
  (``st``) test speakers are espeak-ng ``es-419`` with variants never used in training.
  ``tts`` is the exception: Piper joe is the voice being learnt, so it speaks all splits
  (held out by text only), with a small multi-speaker share from the English training pool.

Items depend only on (recipe, seed, index): the same seed gives the same corpus.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from speechllm.data_recipes import everyday, passages, texts
from speechllm.data_recipes.texts import split_of
from speechllm.data_recipes.voices import ESPEAK_EN_ACCENTS, ESPEAK_VARIANTS, converted_grid, espeak_grid
from speechllm.text_normalize import normalize, spoken_form
from speechllm.tts.speakers import Speaker, estimate_seconds

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Item:
    """One utterance to synthesise and the manifest row it becomes."""

    recipe: str
    index: int
    split: str
    task: str
    speaker: Speaker
    say: str  # what the audio says (synthesizer input)
    text: str | None  # manifest "text": transcript, translation or passage transcript
    prompt: str | None = None
    answer: str | None = None
    lang: str = "en"
    source: str = ""  # "bible:John 3:16", "fortune", "generated", "quiz:africa", ...
    extra: tuple[tuple[str, Any], ...] = ()  # more manifest keys, as (key, JSON value) pairs

    @property
    def id(self) -> str:
        return f"{self.recipe}-{self.index:07d}"

    def estimate_seconds(self) -> float:
        return estimate_seconds(self.speaker, self.say)


@dataclass(frozen=True)
class SpeakerPool:
    speakers: tuple[Speaker, ...]
    weights: tuple[float, ...]  # one per speaker, sums to 1

    @classmethod
    def of(cls, *groups: tuple[tuple[Speaker, ...], float]) -> SpeakerPool:
        """Groups of speakers with a total weight each, split evenly inside a group."""
        speakers, weights = [], []
        for group, weight in groups:
            speakers += group
            weights += [weight / len(group)] * len(group)
        total = sum(weights)
        return cls(tuple(speakers), tuple(w / total for w in weights))

    def draw(self, rng: np.random.Generator) -> Speaker:
        return self.speakers[int(rng.choice(len(self.speakers), p=self.weights))]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(s.id for s in self.speakers)


# ---------------------------------------------------------------- speakers

EN_TEST_SPEAKERS = (Speaker("flite", "slt"), Speaker("flite", "awb"), Speaker("piper", "joe"))
ES_TEST_VARIANTS = ("f4", "m7", "steph", "john", "klatt3", "michel")
EN_TRAIN = SpeakerPool.of(
    (espeak_grid(ESPEAK_EN_ACCENTS, 240, seed=1), 0.8),
    ((Speaker("flite", "kal16"),), 0.1),
    ((Speaker("flite", "rms"),), 0.1),
)
EN_TEST = SpeakerPool.of((EN_TEST_SPEAKERS, 1.0))
_ES_TRAIN_VARIANTS = tuple(v for v in ESPEAK_VARIANTS if v not in ES_TEST_VARIANTS)
ES_TRAIN = SpeakerPool.of(
    (espeak_grid(["es"], 60, seed=2, variants=_ES_TRAIN_VARIANTS, speeds=(130, 185)), 1.0)
)
ES_TEST = SpeakerPool.of(
    (espeak_grid(["es-419"], 12, seed=3, variants=ES_TEST_VARIANTS, speeds=(130, 185)), 1.0)
)
# new speakers from the non-formant training voices by voice conversion (formants, pitch, pace)
EN_CONVERTED = SpeakerPool.of(
    (converted_grid([Speaker("flite", "rms"), Speaker("flite", "kal16")], 160, seed=5), 0.85),
    (converted_grid([Speaker("flite", "kal")], 40, seed=6), 0.15),
)
TTS_POOL = SpeakerPool.of(((Speaker("piper", "joe"),), 0.9), (EN_TRAIN.speakers, 0.1))


# ---------------------------------------------------------------- text pools


@dataclass(frozen=True)
class Text:
    say: str
    key: str
    source: str
    fields: tuple[tuple[str, Any], ...] = ()  # recipe-specific extras (answer, translation, ...)


def _words(text: str) -> int:
    return len(text.split())


@lru_cache(maxsize=1)
def bible_texts() -> tuple[Text, ...]:
    """English verses of 3-40 words, as printed (:func:`_spoken` is applied on drawing; the key
    needs no spoken form: ``split_of`` normalises it)."""
    return tuple(
        Text(pair.en, pair.en, f"bible:{pair.ref}")
        for pair in texts.verse_pairs()
        if 3 <= _words(pair.en) <= 40
    )


@lru_cache(maxsize=1)
def st_texts() -> tuple[Text, ...]:
    """es -> en verse pairs: 3-30 words each side, Spanish/English length ratio 0.6-1.7."""
    out = []
    for pair in texts.verse_pairs():
        en, es = pair.en, pair.es
        if 3 <= _words(en) <= 30 and 3 <= _words(es) <= 30 and 0.6 <= len(es) / len(en) <= 1.7:
            out.append(Text(es, en, f"bible:{pair.ref}", (("translation", en),)))
    return tuple(out)


def _spoken(text: Text) -> Text:
    return replace(text, say=spoken_form(text.say))


def _spoken_st(text: Text) -> Text:
    return replace(
        text, say=spoken_form(text.say, lang="es"), fields=(("translation", spoken_form(text.key)),)
    )


@lru_cache(maxsize=1)
def fortune_texts() -> tuple[Text, ...]:
    return tuple(Text(t, t, "fortune") for t in texts.fortunes())


@lru_cache(maxsize=1)
def generated_texts() -> tuple[Text, ...]:
    return tuple(Text(t, t, "generated") for t in texts.generated_sentences())


@lru_cache(maxsize=1)
def quiz_texts() -> tuple[Text, ...]:
    """Quiz questions; the key joins every item linked by a quiz row or by the same question."""
    items = texts.quiz_items()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for item in items:
        a, b = find(item.key), find("q:" + normalize(item.question))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return tuple(
        Text(
            item.question,
            find(item.key),
            item.source,
            (("answer", item.answer), ("answers", list(item.answers))),
        )
        for item in items
    )


def _generated(fn: Callable[[np.random.Generator], Text]) -> Callable[[np.random.Generator], Iterator[Text]]:
    def stream(rng: np.random.Generator) -> Iterator[Text]:
        while True:
            yield fn(rng)

    return stream


def _passage(rng: np.random.Generator) -> Text:
    qa = texts.passage_qa(rng)
    start = qa.passage.index(qa.answer)
    return Text(
        qa.passage,
        qa.passage,
        "passage",
        (("question", qa.question), ("answer", qa.answer), ("answer_start", start)),
    )


def _grounded(rng: np.random.Generator, told: tuple[int, int] = passages.SHORT) -> Text:
    qa, kind = passages.grounded_qa(rng, told)
    fields = [("question", qa.question), ("answer", qa.answer)]
    if kind == "answered":
        fields.append(("answer_start", qa.passage.index(qa.answer)))
    source = "answered" if kind == "answered" else f"unanswered:{kind}"
    return Text(qa.passage, qa.passage, source, tuple(fields))


def _everyday(rng: np.random.Generator) -> Iterator[Text]:
    """Everyday Spanish -> English pairs from the bilingual grammar (never the translate benchmark's)."""
    for es, en in everyday.training_pairs(rng):
        yield Text(es, es, "everyday", (("translation", en),))


def _arithmetic(rng: np.random.Generator) -> Text:
    sum_ = texts.arithmetic(rng)
    return Text(sum_.question, sum_.question, "arithmetic", (("answer", sum_.answer), ("value", sum_.value)))


def _pool(
    load: Callable[[], tuple[Text, ...]], prepare: Callable[[Text], Text] | None = None
) -> Callable[[np.random.Generator], Iterator[Text]]:
    """Draws without replacement from a fixed pool (``prepare`` applied to each draw)."""
    if prepare is None:
        return lambda rng: texts.cycle(load(), rng)
    return lambda rng: map(prepare, texts.cycle(load(), rng))


# ---------------------------------------------------------------- recipes

ItemFields = Callable[[Text], dict[str, Any]]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    task: str
    sources: tuple[tuple[str, float, Callable[[np.random.Generator], Iterator[Text]]], ...]
    train_speakers: SpeakerPool
    test_speakers: SpeakerPool
    fields: ItemFields  # Text -> Item keyword arguments (text, prompt, answer, lang, extra)

    @property
    def held_out_speakers(self) -> frozenset[str]:
        """Speakers that may appear only in the test split."""
        return self.test_speakers.ids - self.train_speakers.ids

    def items(self, seed: int) -> Iterator[Item]:
        """The endless, deterministic stream of this recipe's items for ``seed``."""
        base = [seed, zlib.crc32(self.name.encode())]
        rng = np.random.default_rng(base)
        names = [s[0] for s in self.sources]
        weights = np.asarray([s[1] for s in self.sources], dtype=float)
        weights /= weights.sum()
        streams = [make(np.random.default_rng(base + [i + 1])) for i, (_, _, make) in enumerate(self.sources)]
        for index in range(10**12):
            which = int(rng.choice(len(names), p=weights))
            text = next(streams[which])
            split = split_of(text.key)
            pool = self.test_speakers if split == "test" else self.train_speakers
            speaker = pool.draw(rng)
            fields = self.fields(text)
            yield Item(
                recipe=self.name,
                index=index,
                split=split,
                task=self.task,
                speaker=speaker,
                say=text.say,
                text=fields.get("text"),
                prompt=fields.get("prompt"),
                answer=fields.get("answer"),
                lang=fields.get("lang", speaker.lang),
                source=text.source,
                extra=tuple(fields.get("extra", {}).items()),
            )


def _transcript(text: Text) -> dict[str, Any]:
    return {"text": text.say}


def _st_fields(text: Text) -> dict[str, Any]:
    f = dict(text.fields)
    return {"text": f["translation"], "lang": "es", "extra": {"source_text": text.say, "target_lang": "en"}}


MEMORY_EXAMPLES = 2  # pairs per st-by-example row: a model's config.json "memory_examples" to match
MEMORY_MIN_SCORE = 15.0  # and its "memory_min_score"


@lru_cache(maxsize=1)
def _bible_memory():
    from speechllm.data_recipes.translation_memory import bible_memory

    return bible_memory()


def _st_by_example_fields(text: Text) -> dict[str, Any]:
    """An st row whose prompt holds the translation memory's pairs nearest the verse (itself and its
    duplicates left out), as a model with ``memory_examples`` is prompted; none near: no prompt."""
    from speechllm.speechlm.tasks import translation_examples

    own = " ".join(text.say.split())
    nearest = _bible_memory().nearest(own, MEMORY_EXAMPLES + 3, MEMORY_MIN_SCORE)
    pairs = [(s, t) for s, t in nearest if s != own][:MEMORY_EXAMPLES]
    fields = _st_fields(text)
    return {**fields, "prompt": translation_examples(pairs[::-1], "es", "en") if pairs else None}


def _sqa_fields(text: Text) -> dict[str, Any]:
    f = dict(text.fields)
    extra = {k: v for k, v in f.items() if k not in ("question", "answer")}
    return {"text": text.say, "prompt": f.get("question"), "answer": f["answer"], "extra": extra}


RECIPES: dict[str, Recipe] = {}
_ASR_SOURCES = (
    ("bible", 0.5, _pool(bible_texts, _spoken)),
    ("fortune", 0.25, _pool(fortune_texts)),
    ("generated", 0.2, _pool(generated_texts)),
    ("quiz", 0.05, _pool(quiz_texts)),
)


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


for _recipe in (
    Recipe(
        "asr",
        "English read speech: Bible verses, fortunes, numbers/dates/money sentences, quiz questions",
        "asr",
        _ASR_SOURCES,
        EN_TRAIN,
        EN_TEST,
        _transcript,
    ),
    Recipe(
        "asr-converted",
        "the asr texts read by 200 new speakers made from flite rms, kal16, kal (formants, pitch, pace)",
        "asr",
        _ASR_SOURCES,
        EN_CONVERTED,
        EN_TEST,
        _transcript,
    ),
    Recipe(
        "st",
        "Spanish Bible verses spoken (RV1909) -> English text (WEB), short verses, sane length ratio",
        "st",
        (("bible", 1.0, _pool(st_texts, _spoken_st)),),
        ES_TRAIN,
        ES_TEST,
        _st_fields,
    ),
    Recipe(
        "st-by-example",
        "the st verses with the translation memory's nearest pairs as examples in the prompt",
        "st",
        (("bible", 1.0, _pool(st_texts, _spoken_st)),),
        ES_TRAIN,
        ES_TEST,
        _st_by_example_fields,
    ),
    Recipe(
        "st-everyday",
        "everyday Spanish sentences from a bilingual grammar -> English text (the held-out ones never)",
        "st",
        (("everyday", 1.0, _everyday),),
        ES_TRAIN,
        ES_TEST,
        _st_fields,
    ),
    Recipe(
        "sqa",
        "spoken quiz questions -> answer; spoken passage + text question -> answer span; spoken sums",
        "sqa",
        (
            ("quiz", 0.5, _pool(quiz_texts)),
            ("passage", 0.3, _generated(_passage)),
            ("arithmetic", 0.2, _generated(_arithmetic)),
        ),
        EN_TRAIN,
        EN_TEST,
        _sqa_fields,
    ),
    Recipe(
        "passages",
        "spoken passages of everyday facts + a text question: an answer span, or "
        f"{passages.NOT_STATED!r} where the passage does not say",
        "sqa",
        (("passage", 1.0, _generated(_grounded)),),
        EN_TRAIN,
        EN_TEST,
        _sqa_fields,
    ),
    Recipe(
        "passages-long",
        "as passages, with five to nine facts a passage (recordings of about 15 to 40 seconds)",
        "sqa",
        (("passage", 1.0, _generated(lambda rng: _grounded(rng, passages.LONG))),),
        EN_TRAIN,
        EN_TEST,
        _sqa_fields,
    ),
    Recipe(
        "tts",
        "Piper joe reading held-apart texts (transcribed), plus a small multi-speaker share",
        "tts",
        (
            ("bible", 0.4, _pool(bible_texts, _spoken)),
            ("fortune", 0.4, _pool(fortune_texts)),
            ("generated", 0.2, _pool(generated_texts)),
        ),
        TTS_POOL,
        TTS_POOL,
        _transcript,
    ),
):
    register_recipe(_recipe)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]


def plan(recipe: str | Recipe, seed: int, hours: float, max_utterances: int | None = None) -> list[Item]:
    """The first items of the stream whose estimated audio reaches ``hours`` (or the cap)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    budget, total, out = hours * 3600.0, 0.0, []
    for item in recipe.items(seed):
        if total >= budget or (max_utterances is not None and len(out) >= max_utterances):
            break
        out.append(item)
        total += item.estimate_seconds()
    return out
