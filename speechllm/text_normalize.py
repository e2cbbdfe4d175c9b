"""One text normalisation for making corpora and for scoring them.

Choice: **spoken-form words**. Numbers, money, times, percentages, ordinals and a few symbols
and abbreviations are written out the way they are read ("23" -> "twenty three", "$3.50" ->
"three dollars and fifty cents", "3:05 pm" -> "three oh five p.m.", "1909" -> "nineteen oh
nine"). Corpora are synthesized from :func:`spoken_form` text and store it as the
transcript, so the transcript says exactly what the audio says (a synthesizer reading
digits would choose its own reading). Scoring compares :func:`normalize` of the reference
and of the hypothesis; because ``normalize`` applies ``spoken_form`` first, a system that
writes "23" and one that writes "twenty-three" score the same against "twenty three".

- :func:`spoken_form` keeps case and punctuation (good text to synthesize and to train on).
- :func:`normalize` is the scoring form: spoken form, lower case, punctuation removed
  (apostrophes inside words kept, hyphens become spaces), whitespace collapsed.
  ``normalize(spoken_form(x)) == normalize(x)``.

Readings (fixed, so both sides agree): cardinals without "and" ("one hundred five");
4-digit numbers 1100-1999 and 2010-2099 without thousands commas read as years ("nineteen
oh nine", "twenty twenty four"), other numbers as cardinals ("2005" -> "two thousand five",
"1,909" -> "one thousand nine hundred nine"); decimals digit by digit after "point".
Only English is expanded; other languages get the Unicode clean-up only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from fractions import Fraction

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
MONTHS = ("January February March April May June July August September October November December").split()


def number_to_words(n: int) -> str:
    """Cardinal reading of an integer: 123 -> "one hundred twenty three"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (" " + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + (" " + number_to_words(rest) if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return number_to_words(high) + " " + name + (" " + number_to_words(rest) if rest else "")
    raise AssertionError("unreachable")


_WORD_VALUES = {word: i for i, word in enumerate(_ONES)} | {
    word: 10 * i for i, word in enumerate(_TENS) if word != "_"}
_SCALE_VALUES = {name: value for value, name in _SCALES}
_NUMERAL = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")


def read_number(words: Sequence[str], start: int = 0) -> tuple[Fraction, int] | None:
    """The number that ``words[start:]`` begin with and the index after it, or None: a numeral
    ("1,234", "2.5") or cardinal words as :func:`number_to_words` writes them and as people say them
    ("one hundred and five", "a hundred", "twenty one", "two point five"). Words are lower case, one
    per item (hyphens split). It stops where the words stop making one number: "two three" is 2."""
    if start < len(words) and _NUMERAL.fullmatch(words[start]):
        return Fraction(words[start].replace(",", "")), start + 1
    if start < len(words) and words[start] == "zero":
        return Fraction(0), start + 1
    total, current, scale, i, last = 0, 0, None, start, None  # last: what the previous word was
    while i < len(words):
        word, after = words[i], words[i + 1] if i + 1 < len(words) else ""
        value = _WORD_VALUES.get(word, 0)
        if 1 <= value <= 9 and last in (None, "hundred", "scale", "and", "tens"):
            current, last = current + value, "ones"
        elif value >= 10 and last in (None, "hundred", "scale", "and"):
            current, last = current + value, "tens" if value >= 20 and value % 10 == 0 else "teen"
        elif word == "a" and last is None and (after == "hundred" or after in _SCALE_VALUES):
            current, last = 1, "a"
        elif word == "hundred" and 0 < current < 100 and last in ("ones", "teen", "a"):
            current, last = current * 100, "hundred"
        elif (word in _SCALE_VALUES and current and last not in (None, "and", "scale")
              and (scale is None or _SCALE_VALUES[word] < scale)):
            scale = _SCALE_VALUES[word]
            total, current, last = total + current * scale, 0, "scale"
        elif word == "and" and last in ("hundred", "scale") and _WORD_VALUES.get(after, 0) > 0:
            last = "and"
        elif word == "point" and last in ("ones", "teen", "tens") and after in _ONES[:10]:
            digits = ""
            while i + 1 < len(words) and words[i + 1] in _ONES[:10]:
                digits += str(_ONES.index(words[i + 1]))
                i += 1
            return total + current + Fraction(int(digits), 10 ** len(digits)), i + 1
        else:
            break
        i += 1
    return (Fraction(total + current), i) if last in ("ones", "teen", "tens", "hundred", "scale") else None


def ordinal_to_words(n: int) -> str:
    """21 -> "twenty first"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_to_words(n: int) -> str:
    """1909 -> "nineteen oh nine", 1900 -> "nineteen hundred", 2024 -> "twenty twenty four"."""
    if 2000 <= n <= 2009 or not 1000 <= n <= 9999:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return number_to_words(high) + " hundred"
    return number_to_words(high) + (" oh " + _ONES[low] if low < 10 else " " + number_to_words(low))


def _is_year(digits: str) -> bool:
    return len(digits) == 4 and (1100 <= int(digits) <= 1999 or 2010 <= int(digits) <= 2099)


def _integer(digits: str) -> str:
    digits = digits.replace(",", "")
    return year_to_words(int(digits)) if _is_year(digits) else number_to_words(int(digits))


def _decimal(whole: str, frac: str) -> str:
    head = number_to_words(int(whole.replace(",", ""))) if whole else "zero"
    return head + " point " + " ".join(_ONES[int(d)] for d in frac)


def _plural(count_words: str, unit: str) -> str:
    return f"{count_words} {unit}" if count_words == "one" else f"{count_words} {unit}s"


_CURRENCIES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}
_SCALE_WORDS = "thousand|million|billion|trillion"


def _money(match: re.Match) -> str:
    major, minor = _CURRENCIES[match["cur"]]
    whole, frac, scale = match["whole"].replace(",", ""), match["frac"], match["scale"]
    if scale:  # "$3.5 million" -> "three point five million dollars"
        amount = _decimal(whole, frac) if frac else number_to_words(int(whole))
        return f"{amount} {scale} {major}s"
    units = int(whole) if whole else 0
    cents = int((frac + "0")[:2]) if frac else 0
    parts = []
    if units or not cents:
        parts.append(_plural(number_to_words(units), major))
    if cents:
        minor_word = ("pence" if cents != 1 else "penny") if minor == "penny" else None
        parts.append(
            f"{number_to_words(cents)} {minor_word}" if minor_word else _plural(number_to_words(cents), minor)
        )
    return " and ".join(parts)


def _time(match: re.Match) -> str:
    hour, minute = int(match["h"]), int(match["m"])
    if minute == 0:
        words = number_to_words(hour) + (" o'clock" if not match["ampm"] else "")
    elif minute < 10:
        words = f"{number_to_words(hour)} oh {_ONES[minute]}"
    else:
        words = f"{number_to_words(hour)} {number_to_words(minute)}"
    if match["ampm"]:
        words += " a.m." if match["ampm"][0].lower() == "a" else " p.m."
    return words


_SUFFIX_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I)
_MONTH_DAY = re.compile(r"\b(" + "|".join(MONTHS) + r")\s+(\d{1,2})\b(?!\s*:|[.,]\d)")
_TIME = re.compile(r"\b(?P<h>[012]?\d):(?P<m>[0-5]\d)\b(?:\s*(?P<ampm>[ap]\.?m\.?)(?![a-z]))?", re.I)
_DOT_TIME = re.compile(
    r"\b(?P<h>[01]?\d)\.(?P<m>[0-5]\d)\s*(?P<ampm>[ap]\.?m\.?)(?![a-z])", re.I
)  # "9.15 am"
_AMPM = re.compile(r"(?<=\d)\s*([ap])\.?m\.?(?![a-z])", re.I)
_MONEY = re.compile(
    r"(?P<cur>[$£€])\s?(?P<whole>\d[\d,]*|(?=\.\d))(?:\.(?P<frac>\d+))?(?:\s+(?P<scale>"
    + _SCALE_WORDS
    + r")\b)?"
)
_PERCENT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?%")
_DECIMAL = re.compile(r"(?<![\d.])(\d[\d,]*)?\.(\d+)\b")
_NEGATIVE = re.compile(r"(?<![\w)])-(?=\d)")
_GROUPED = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_INTEGER = re.compile(r"\d+")
_ABBREVIATIONS = {
    r"\bMr\.": "Mister",
    r"\bMrs\.": "Missus",
    r"\bDr\.": "Doctor",
    r"\bvs\.": "versus",
    r"\betc\.": "et cetera",
    r"\be\.g\.": "for example",
    r"\bi\.e\.": "that is",
    r"\bNo\.(?=\s*\d)": "number",
}
_SYMBOLS = (
    (re.compile(r"\s*&\s*"), " and "),
    (re.compile(r"(?<=\d)\s*[x×*]\s*(?=\d)"), " times "),
    (re.compile(r"\s*÷\s*"), " divided by "),
    (re.compile(r"\s*\+\s*"), " plus "),
    (re.compile(r"\s*=\s*"), " equals "),
    (re.compile(r"(?<=\d)\s+-\s+(?=\d)"), " minus "),  # "7 - 3"; "1789-1797" is a range
    (re.compile(r"(?<=\d)-(?=\d)"), " to "),
    (re.compile(r"°\s*([CF])\b"), lambda m: " degrees " + ("Celsius" if m[1] == "C" else "Fahrenheit")),
    (re.compile(r"\s*°"), " degrees"),
    (re.compile(r"#(?=\d)"), "number "),
    (re.compile(r"\s*@\s*"), " at "),
)
_UNICODE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": ", ",
        "\u2015": ", ",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\t": " ",
        "\n": " ",
        "\r": " ",
    }
)


def clean_unicode(text: str) -> str:
    """NFC, typographic quotes and dashes to ASCII, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).translate(_UNICODE)
    return re.sub(r"\s+", " ", text).strip()


def spoken_form(text: str, lang: str = "en") -> str:
    """Text as it is read aloud, case and punctuation kept: what corpora synthesize and store."""
    text = clean_unicode(text)
    if not lang.lower().startswith("en"):
        return text
    for pattern, words in _ABBREVIATIONS.items():
        text = re.sub(pattern, words, text)
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(lambda m: _number_text(m[1]) + " percent", text)
    text = _TIME.sub(_time, text)
    text = _DOT_TIME.sub(_time, text)
    text = _AMPM.sub(lambda m: " a.m." if m[1].lower() == "a" else " p.m.", text)
    text = _MONTH_DAY.sub(lambda m: f"{m[1]} {ordinal_to_words(int(m[2]))}", text)
    text = _SUFFIX_ORDINAL.sub(lambda m: ordinal_to_words(int(m[1])), text)
    text = _NEGATIVE.sub("minus ", text)
    for pattern, words in _SYMBOLS:
        text = pattern.sub(words, text)
    text = _DECIMAL.sub(lambda m: _decimal(m[1] or "", m[2]), text)
    text = _GROUPED.sub(lambda m: number_to_words(int(m[0].replace(",", ""))), text)
    text = _INTEGER.sub(lambda m: _integer(m[0]), text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _number_text(number: str) -> str:
    whole, _, frac = number.partition(".")
    return _decimal(whole, frac) if frac else number_to_words(int(whole.replace(",", "")))


_SCORING_DROP = re.compile(r"[^\w\s']|_")


def normalize(text: str, lang: str = "en") -> str:
    """The scoring form: spoken form, lower case, no punctuation, single spaces.

    Apostrophes inside words stay ("don't"); hyphens, slashes and other punctuation become
    spaces. Use it on both the reference and the hypothesis before computing WER.
    """
    text = spoken_form(text, lang).lower()
    text = _SCORING_DROP.sub(" ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


# --- Whisper's English normaliser, beside the spoken form -------------------------------------
# openai-whisper's ``EnglishTextNormalizer`` (whisper/normalizers/english.py, MIT licence,
# Copyright (c) 2022 OpenAI): the normaliser published English WERs (Whisper paper, the Open ASR
# leaderboard) are computed with. It goes the other way from ours: spoken numbers become digits
# ("twenty nineteen" -> "2019", "ninety percent" -> "90%"), contractions and titles are
# expanded ("let's" -> "let us", "Mr." -> "mister"), British spellings become American through
# whisper's english.json (shipped here as whisper_english_spelling.json, MIT, OpenAI), fillers
# ("um", "uh") and bracketed text are dropped. The code is the line-for-line copy transformers
# ships (transformers.models.whisper.english_normalizer, a core dependency already), so it is
# used from there rather than copied a third time.


class WhisperEnglishNormalizer:
    """Callable ``str -> str`` with openai-whisper's ``EnglishTextNormalizer`` semantics."""

    def __init__(self) -> None:
        import json
        from pathlib import Path

        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        spelling = Path(__file__).with_name("whisper_english_spelling.json")
        self._normalize = EnglishTextNormalizer(json.loads(spelling.read_text(encoding="utf-8")))

    def __call__(self, text: str) -> str:
        return self._normalize(text)


def _no_normalization(text: str) -> str:
    return " ".join(text.split())


# scoring normalisers by name: the benchmarks' --normalizer and the metrics' ``normalizer=``
NORMALIZERS = {"spoken": lambda: normalize, "whisper": WhisperEnglishNormalizer,
               "none": lambda: _no_normalization}
_BUILT: dict = {}


def get_normalizer(name: str = "spoken"):
    """The scoring normaliser called ``name`` (see :data:`NORMALIZERS`), built once."""
    if name not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {name!r} (choose from {', '.join(NORMALIZERS)})")
    if name not in _BUILT:
        _BUILT[name] = NORMALIZERS[name]()
    return _BUILT[name]
