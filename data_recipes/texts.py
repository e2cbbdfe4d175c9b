"""Text sources for synthetic corpora, all offline (Debian packages) or generated.

- Bible verses: World English Bible (``engWEB2015eb``) and Reina-Valera 1909 (``spaRV1909eb``)
  read with ``diatheke`` one whole module per call (OSIS markup stripped), aligned by verse
  reference into es/en pairs.
- bsdgames quiz tables: question/answer pairs in both directions from question templates.
- fortunes: short single-line quotes, cleaned.
- generated sentences: numbers, dates, times, money, percentages, arithmetic.

Every text returned here is already in :func:`speechllm.text_normalize.spoken_form` (English)
or Unicode-cleaned (Spanish): the form that is synthesized and stored as the transcript.
Every pool is fixed (independent of a build's seed) so that held-out splits, which hash the
text, stay the same from one build to the next. Parsed pools are cached in memory and, for
the slow ones (the Bible, ~5 s), on disk under ``$XDG_CACHE_HOME/speechllm/texts``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from speechllm.files import atomic_write_json
from speechllm.text_normalize import MONTHS, clean_unicode, normalize, number_to_words, spoken_form

QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
BIBLE_EN = "engWEB2015eb"
BIBLE_ES = "spaRV1909eb"
_PACKAGES = {BIBLE_EN: "sword-text-web", BIBLE_ES: "sword-text-sparv"}
TEST_FRACTION = 0.05
DEV_FRACTION = 0.05
GENERATED_SEED = 20_251_123  # fixed: the generated pools never change with a build's seed


class TextSourceError(RuntimeError):
    """A text source is not installed; the message says what to install."""


# ---------------------------------------------------------------- Bible


@dataclass(frozen=True)
class VersePair:
    ref: str  # "John 3:16"
    en: str  # as printed (not yet spoken form)
    es: str


_LINE_REF = re.compile(r"^\s*(?P<book>(?:I{1,3} )?[A-Z][A-Za-z]*(?: [A-Za-z()]+)*?) \d+:\d+: ", re.M)
PARSER_VERSION = 3  # part of the cache file name: bump when parse_osis changes


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "speechllm" / "texts"


def parse_osis(raw: str) -> dict[str, str]:
    """``diatheke`` OSIS output (``Book C:V: <w>..</w>`` lines) -> {reference: plain text}.

    Verse references are found anywhere (some verses follow markup on the same line), but
    only for book names that start a line somewhere in the output.
    """
    raw = re.sub(r"<title\b[^>]*>.*?</title>", " ", raw, flags=re.S)  # headings, not verse text
    raw = re.sub(r"<note\b[^>]*>.*?</note>", " ", raw, flags=re.S)  # footnotes
    raw = raw.replace("</w><w", "</w> <w")  # the WEB module glues some words ("Godcreated")
    raw = re.sub(r"<[^>]+>", "", raw)
    raw = re.sub(r"\s*\(\w+\)\s*$", "", raw)  # the closing "(module)" line
    books = sorted({m["book"] for m in _LINE_REF.finditer(raw)}, key=len, reverse=True)
    if not books:
        return {}
    ref = re.compile(r"(?<!\S)(?P<book>" + "|".join(map(re.escape, books)) + r") (?P<ch>\d+):(?P<v>\d+): ")
    starts = list(ref.finditer(raw))
    verses: dict[str, str] = {}
    for match, after in zip(starts, starts[1:] + [None], strict=True):
        text = clean_unicode(raw[match.end() : after.start() if after else len(raw)])
        if text:
            verses[f"{match['book']} {match['ch']}:{match['v']}"] = text
    return verses


def _diatheke(module: str) -> str:
    if shutil.which("diatheke") is None:
        raise TextSourceError("diatheke is not installed: apt-get install diatheke")
    listing = subprocess.run(
        ["diatheke", "-b", "system", "-k", "modulelist"], capture_output=True, text=True, check=False
    ).stdout
    if not re.search(rf"^{re.escape(module)} :", listing, re.M):
        raise TextSourceError(
            f"SWORD module {module} is not installed: apt-get install {_PACKAGES.get(module, module)}"
        )
    out = subprocess.run(
        ["diatheke", "-b", module, "-k", "Gen-Rev"], capture_output=True, text=True, check=True
    )
    return out.stdout


@lru_cache(maxsize=4)
def bible(module: str) -> dict[str, str]:
    """Every verse of a SWORD Bible module (one ``diatheke`` call, cached on disk)."""
    cache = _cache_dir() / f"{module}.v{PARSER_VERSION}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    verses = parse_osis(_diatheke(module))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, verses, durable=False, ensure_ascii=False)
    except OSError:
        pass  # a read-only home only costs the next process another parse
    return verses


@lru_cache(maxsize=1)
def verse_pairs() -> tuple[VersePair, ...]:
    """Aligned (reference, English, Spanish) verses present in both modules, as printed
    (apply :func:`spoken_form` to the English before use)."""
    en, es = bible(BIBLE_EN), bible(BIBLE_ES)
    return tuple(VersePair(ref, en[ref], es[ref]) for ref in en if ref in es)


def split_of(key: str) -> str:
    """train / dev / test from a hash of the normalised key: fixed for a text in every build (the
    recipes' split rule, :mod:`speechllm.data_recipes.recipes`)."""
    digest = hashlib.sha1(normalize(key).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < TEST_FRACTION else "dev" if u < TEST_FRACTION + DEV_FRACTION else "train"


def held_out_verses(count: int = 250, max_words: int = 14, seed: int = 7) -> list[VersePair]:
    """The short verses the translation benchmark speaks (``benchmarks/translate.py``), drawn from the
    ``st`` recipe's test split (keyed by the English verse), so no training row ever holds one; never
    put that split in anything a model looks up either (the shipped translation memories leave it out)."""
    rng = np.random.default_rng(seed)
    pool = [v for v in verse_pairs() if len(v.es.split()) <= max_words and len(v.en.split()) <= max_words + 4
            and split_of(v.en) == "test"]
    return [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]


# ---------------------------------------------------------------- bsdgames quiz


def _split_top(pattern: str, sep: str) -> list[str]:
    """Split on ``sep`` outside {} and [] (backslash escapes kept for later)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            cur.append(pattern[i : i + 2])
            i += 2
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def expand_quiz(pattern: str, limit: int = 64) -> list[str]:
    """Every string a quiz pattern accepts (``a|b`` alternatives, ``{x}`` optional, ``[..]``
    grouping, ``\\`` escapes, see quiz(6)), the fullest reading of the first alternative first."""
    out: list[str] = []
    for alt in _split_top(pattern, "|"):
        results = [""]
        i = 0
        while i < len(alt):
            c = alt[i]
            if c in "{[":
                close = "}" if c == "{" else "]"
                depth, j = 1, i + 1
                while j < len(alt) and depth:
                    if alt[j] == "\\":
                        j += 2
                        continue
                    depth += alt[j] == c
                    depth -= alt[j] == close
                    j += 1
                inner = expand_quiz(alt[i + 1 : j - 1], limit)
                options = inner + [""] if c == "{" else inner
                results = [r + o for r in results for o in options][:limit]
                i = j
                continue
            if c == "\\" and i + 1 < len(alt):
                c, i = alt[i + 1], i + 1
            results = [r + c for r in results]
            i += 1
        out.extend(r for r in results if r not in out)
    return out[:limit]


def read_quiz_table(path: Path) -> list[list[str]]:
    """Rows of fields (patterns) of one quiz data file; continuation lines joined."""
    text = path.read_text(encoding="latin-1").replace("\\\n", "")
    return [_split_top(line, ":") for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class QuizTemplate:
    ask: int  # field index of the question's subject
    answer: int  # field index of the answer
    question: str  # "What is the capital of {}?"


@dataclass(frozen=True)
class QuizItem:
    question: str  # spoken form
    answer: str  # canonical answer, spoken form
    answers: tuple[str, ...]  # every accepted answer, spoken form
    key: str  # "quiz:TABLE:SUBJECT": both directions of one fact share it (one split)
    source: str  # "quiz:TABLE"


def _capitals(kind: str) -> tuple[QuizTemplate, ...]:
    return (
        QuizTemplate(0, 1, "What is the capital of {}?"),
        QuizTemplate(1, 0, "{} is the capital of which " + kind + "?"),
    )


QUIZ_TEMPLATES: dict[str, tuple[QuizTemplate, ...]] = {
    "africa": _capitals("African country"),
    "america": _capitals("country in the Americas"),
    "asia": _capitals("Asian country"),
    "europe": _capitals("European country"),
    "province": _capitals("Canadian province"),
    "state": _capitals("American state") + (QuizTemplate(0, 3, "What is the state flower of {}?"),),
    "midearth": (QuizTemplate(0, 1, "In Middle-earth, what is the capital of {}?"),),
    "pres": (
        QuizTemplate(0, 3, "Who succeeded {} as president of the United States?"),
        QuizTemplate(0, 2, "Who was vice president under {}?"),
        QuizTemplate(0, 1, "When was {} president?"),
    ),
    "elements": (
        QuizTemplate(3, 1, "What is the atomic number of {}?"),
        QuizTemplate(1, 3, "Which element has the atomic number {}?"),
        QuizTemplate(3, 0, "What is the chemical symbol for {}?"),
    ),
    "collectives": (QuizTemplate(0, 1, "What do you call a group of {}?"),),
    "babies": (
        QuizTemplate(0, 1, "A {} is the young of which animal?"),
        QuizTemplate(1, 0, "What is a young {} called?"),
    ),
    "sexes": (
        QuizTemplate(0, 1, "What is the female counterpart of {}?"),
        QuizTemplate(1, 0, "What is the male counterpart of {}?"),
    ),
    "flowers": (QuizTemplate(0, 1, "In the language of flowers, what does {} mean?"),),
    "latin": (QuizTemplate(0, 1, "What does the Latin word {} mean?"),),
    "murders": (QuizTemplate(0, 1, "Who or what killed {}?"),),
    "inca": (QuizTemplate(0, 1, "Which Inca ruler succeeded {}?"),),
    "chinese": (QuizTemplate(0, 1, "In the Chinese zodiac, which year follows the year of the {}?"),),
    "posneg": (
        QuizTemplate(0, 1, "What is the opposite of {}?"),
        QuizTemplate(1, 0, "What is the opposite of {}?"),
    ),
    "poetry": (
        QuizTemplate(0, 1, "Which line follows: {}?"),
        QuizTemplate(0, 2, "Which poem has the line: {}?"),
        QuizTemplate(0, 3, "Who wrote the line: {}?"),
    ),
    "bard": (
        QuizTemplate(0, 1, "In Shakespeare, which line follows: {}?"),
        QuizTemplate(0, 2, "Which Shakespeare play has the line: {}?"),
        QuizTemplate(0, 3, "Which Shakespeare character says: {}?"),
    ),
    "seq-easy": (
        QuizTemplate(0, 1, "Which number comes next: {}?"),
        QuizTemplate(0, 2, "What is the sequence {} called?"),
    ),
    "seq-hard": (
        QuizTemplate(0, 1, "Which number comes next: {}?"),
        QuizTemplate(0, 2, "What is the sequence {} called?"),
    ),
}
_NO_ANSWER = {"", "gok"}  # "gok": God only knows


def _quiz_text(text: str) -> str:
    text = re.sub(r"\([^)]*\)", "", text)  # hints such as "7{(integers)}"
    text = re.sub(r"(\d),(?=\d)", r"\1, ", text)  # "1,2,3" is a sequence, not 123
    return spoken_form(text.strip(" ,;:.!?"))


@lru_cache(maxsize=1)
def quiz_items(quiz_dir: Path = QUIZ_DIR) -> tuple[QuizItem, ...]:
    """Question/answer items from every templated quiz table (both directions where sensible)."""
    if not quiz_dir.is_dir():
        raise TextSourceError(
            f"bsdgames quiz tables are not installed ({quiz_dir}): apt-get install bsdgames"
        )
    items = []
    for table, templates in QUIZ_TEMPLATES.items():
        path = quiz_dir / table
        if not path.is_file():
            continue
        for row in read_quiz_table(path):
            key = f"quiz:{table}:{_quiz_text(expand_quiz(row[0])[0])}"
            for t in templates:
                if max(t.ask, t.answer) >= len(row):
                    continue
                subject = _quiz_text(expand_quiz(row[t.ask])[0])
                answers = tuple(dict.fromkeys(_quiz_text(a) for a in expand_quiz(row[t.answer])))
                answers = tuple(a for a in answers if a.lower() not in _NO_ANSWER)
                if subject and answers:
                    items.append(
                        QuizItem(
                            spoken_form(t.question.format(subject)), answers[0], answers, key, f"quiz:{table}"
                        )
                    )
    return tuple(items)


# ---------------------------------------------------------------- fortunes

_FORTUNE_CHARS = re.compile(r"[A-Za-z0-9 .,;:!?'\"()$%&-]+")


def clean_fortune(entry: str) -> str | None:
    """A short single-line quote made speakable, or None when it is not one."""
    entry = entry.strip()
    if not entry or "\n" in entry or "\t" in entry:
        return None
    entry = re.sub(r"\s+--\s*[A-Z][^-]*$", "", entry)  # "-- Yogi Berra"
    if not _FORTUNE_CHARS.fullmatch(entry) or "--" in entry or "..." in entry:
        return None
    entry = re.sub(r"[()\"]", "", entry)
    entry = re.sub(r"([!?.])[!?.]+", r"\1", entry)
    entry = re.sub(r"\b[A-Z][A-Z']{3,}\b", lambda m: m[0].lower(), entry)  # shouting
    words = entry.split()
    if not 4 <= len(words) <= 25 or not re.search(r"[a-z]", entry):
        return None
    return spoken_form(entry)


@lru_cache(maxsize=1)
def fortunes(fortune_dir: Path = FORTUNE_DIR) -> tuple[str, ...]:
    """Short single-line quotes from the fortunes databases (sorted, duplicates removed)."""
    if not fortune_dir.is_dir():
        raise TextSourceError(f"fortunes are not installed ({fortune_dir}): apt-get install fortunes")
    out = set()
    for path in sorted(fortune_dir.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes, .u8 links
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            quote = clean_fortune(entry)
            if quote:
                out.add(quote)
    return tuple(sorted(out))


# ---------------------------------------------------------------- generated sentences

WOMEN = "Alice Diana Emma Grace Hannah Julia Laura Maria Olivia Rachel Teresa Wendy Zoe Bianca Elena".split()
MEN = "Bob Carlos Frank Ivan Kevin Nathan Peter Samuel Victor Yusuf Ahmed Daniel Felix Hugo".split()
NAMES = tuple(WOMEN + MEN)
_PLACES = (
    "market library station bakery museum harbor hospital garden stadium bank post office school "
    "airport pharmacy theater"
).split(" ")
_ITEMS = "apples books tickets candles oranges notebooks plates pencils lamps chairs cups towels".split()
_TOPICS = (
    "the weather",
    "a new job",
    "their holiday plans",
    "the football match",
    "an old friend",
    "the price of bread",
    "a broken bicycle",
    "the school concert",
    "a strange dream",
    "the garden",
)
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _time_text(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(1, 13))}:{int(rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])):02d} " + str(
        rng.choice(["am", "pm"])
    )


def _money_text(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return f"${int(rng.integers(1, 100))}"
    return f"${int(rng.integers(0, 50))}.{int(rng.integers(1, 100)):02d}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_SENTENCES: tuple[Callable[[np.random.Generator], str], ...] = (
    lambda r: f"The meeting is on {r.choice(MONTHS)} {r.integers(1, 29)}, {r.integers(1950, 2031)}.",
    lambda r: f"The train to {r.choice(NAMES)}ville leaves at {_time_text(r)}.",
    lambda r: f"The {r.choice(_ITEMS)[:-1]} costs {_money_text(r)}.",
    lambda r: f"There were {r.integers(2, 100000):,} people at the {r.choice(_PLACES)}.",
    lambda r: f"About {r.integers(1, 100)}% of the {r.choice(_ITEMS)} were sold by {_time_text(r)}.",
    lambda r: f"Please call extension {r.integers(100, 10000)} before {r.choice(_DAYS)}.",
    lambda r: (
        f"The temperature reached {r.integers(-20, 45)} degrees on {r.choice(MONTHS)} {r.integers(1, 29)}."
    ),
    lambda r: (
        f"{r.choice(NAMES)} was born in {r.integers(1900, 2025)} and moved house {r.integers(2, 12)} times."
    ),
    lambda r: f"Room {r.integers(1, 500)} is on the {_ordinal(int(r.integers(1, 30)))} floor.",
    lambda r: f"The bill came to {_money_text(r)}, and {r.choice(NAMES)} paid {_money_text(r)} of it.",
    lambda r: f"The shop opens at {_time_text(r)} and closes at {_time_text(r)}.",
    lambda r: f"We drove {r.integers(2, 900)} miles in {r.integers(2, 14)} hours.",
    lambda r: f"The score was {r.integers(0, 8)} to {r.integers(0, 8)} after {r.integers(10, 90)} minutes.",
    lambda r: f"{r.integers(2, 13)} times {r.integers(2, 13)} is a number {r.choice(NAMES)} knows by heart.",
    lambda r: f"The population grew by {r.integers(1, 30)}.{r.integers(0, 10)}% in {r.integers(1950, 2025)}.",
)


@dataclass(frozen=True)
class Arithmetic:
    question: str  # spoken form ("What is seven times eight?")
    answer: str  # spoken form ("fifty six")
    value: int


_OPS: tuple[tuple[str, Callable[[int, int], int], int], ...] = (
    ("plus", lambda a, b: a + b, 100),
    ("minus", lambda a, b: a - b, 100),
    ("times", lambda a, b: a * b, 13),
    ("divided by", lambda a, b: a // b, 13),
)


def arithmetic(rng: np.random.Generator) -> Arithmetic:
    """A small spoken sum with a whole, non-negative answer."""
    name, fn, top = _OPS[int(rng.integers(len(_OPS)))]
    a, b = int(rng.integers(1, top)), int(rng.integers(1, top))
    if name == "minus" and b > a:
        a, b = b, a
    if name == "divided by":
        a = a * b
    value = fn(a, b)
    lead = str(rng.choice(["What is", "How much is", "What do you get for"]))
    return Arithmetic(spoken_form(f"{lead} {a} {name} {b}?"), number_to_words(value), value)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=1)
def generated_sentences(count: int = 20_000) -> tuple[str, ...]:
    """A fixed pool of sentences full of numbers, dates, times and money (spoken form)."""
    rng = np.random.default_rng(GENERATED_SEED)
    out = dict.fromkeys(
        _capitalize(spoken_form(_SENTENCES[int(rng.integers(len(_SENTENCES)))](rng))) for _ in range(count)
    )
    return tuple(out)


# ---------------------------------------------------------------- passage QA (LibriSQA style)


@dataclass(frozen=True)
class PassageQA:
    passage: str  # spoken form
    question: str
    answer: str  # a span of ``passage``


def story(rng: np.random.Generator) -> tuple[str, list[tuple[str, str]], list[str]]:
    """A short story of two to four sentences: (passage, the questions it answers as (question, answer
    span) pairs, the questions of the same story that it leaves unanswered)."""
    name, friend = (str(n) for n in rng.choice(NAMES, size=2, replace=False))
    he = "She" if name in WOMEN else "He"
    place, day, topic = str(rng.choice(_PLACES)), str(rng.choice(_DAYS)), str(rng.choice(_TOPICS))
    count, item = number_to_words(int(rng.integers(2, 20))), str(rng.choice(_ITEMS))
    money, time = spoken_form(_money_text(rng)), spoken_form(_time_text(rng))
    sentences = [
        f"On {day} morning, {name} went to the {place}.",
        f"{he} bought {count} {item} for {money}.",
        f"At {time}, {name} met {friend} outside.",
        f"They talked about {topic} for a while.",
    ]
    questions = [
        (f"Where did {name} go on {day} morning?", f"the {place}"),
        (f"How many {item} did {name} buy?", count),
        (f"How much did {name} pay for the {item}?", money),
        (f"Who did {name} meet?", friend),
        (f"When did {name} meet {friend}?", f"At {time}"),
        (f"What did {name} and {friend} talk about?", topic),
        (f"On which day did {name} go to the {place}?", day),
    ]
    order = [0] + sorted(rng.permutation(np.arange(1, 4))[: int(rng.integers(2, 4))].tolist())
    passage = " ".join(sentences[i] for i in order)
    usable = [(q, a) for q, a in questions if a in passage]
    return passage, usable, [q for q, a in questions if a not in passage]


def passage_qa(rng: np.random.Generator) -> PassageQA:
    """A short story and one question whose answer is a span of it."""
    passage, usable, _ = story(rng)
    question, answer = usable[int(rng.integers(len(usable)))]
    return PassageQA(passage, question, answer)


def cycle(pool: tuple, rng: np.random.Generator) -> Iterator:
    """Endless draws without replacement: a fresh permutation of ``pool`` per pass."""
    if not pool:
        raise ValueError("empty text pool")
    while True:
        for i in rng.permutation(len(pool)):
            yield pool[int(i)]
