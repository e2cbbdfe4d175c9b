"""Skills: questions a speech-LLM answers exactly, without its LLM writing the reply.

A 135M LLM cannot add ("sixty nine plus thirty nine" -> "1000") and does not know the time, yet
both are among the first things people ask a voice assistant. A skill recognises such a question
in a typed message or a spoken question's transcript and computes the answer; every other message
goes to the LLM as before. A skill answers only when the whole message (its last paragraph: a
chat turn's history comes before it) is a question it knows, so "what is the sum of our costs"
or "tell me three times you were wrong" still reach the LLM.

A skill may also answer a question about a recording as a whole (``Skill.about_recording``): asked
"what is this recording about?" or "summarize it", the starter's LLM, taught to quote what a recording
says or to say it does not say, answered "The recording does not say.", and free-writing it made
things up. ``gist`` answers with the recording's opening sentences, quoted from its transcript.

A model folder names the skills it uses in config.json (``"skills": ["arithmetic", "clock", "gist"]``,
the starter's); a new skill is one ``register_skill(Skill(...))``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from speechllm.speechlm.tasks import NOT_STATED
from speechllm.text_normalize import number_to_words, read_number

Answerer = Callable[[str], str]  # what a recording says (its transcript) -> the reply


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    # a message (lower case, no end punctuation) -> reply, or None: one it does not know
    answer: Callable[[str], str | None] | None = None
    # a question about a recording (lower case, no end punctuation) -> how to answer it from the transcript,
    # or None: one it does not know
    about_recording: Callable[[str], Answerer | None] | None = None


SKILLS: dict[str, Skill] = {}


def register_skill(skill: Skill) -> Skill:
    SKILLS[skill.name] = skill
    return skill


def check_skills(names: Sequence[str]) -> None:
    """A ValueError naming any skill that is not registered."""
    unknown = [n for n in names if n not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skill(s) {', '.join(unknown)} (known: {', '.join(SKILLS)})")


def _question(message: str) -> str | None:
    """A message's last paragraph, lower case, without end punctuation; None where that is empty or
    several lines."""
    question = message.strip().rsplit("\n\n", 1)[-1].strip().lower().rstrip("?.! ").strip()
    return question if question and "\n" not in question else None


def _first(message: str, names: Sequence[str], pick: Callable[[Skill, str], Any]) -> Any:
    """``pick(skill, question)`` of the first of ``names`` that gives one (not None) for ``message``'s
    question (:func:`_question`), or None."""
    if (question := _question(message)) is None:
        return None
    return next((found for name in names if (found := pick(SKILLS[name], question)) is not None), None)


def skill_reply(message: str, names: Sequence[str]) -> str | None:
    """The reply of the first of ``names`` that answers ``message`` (its last paragraph), or None."""
    return _first(message, names, lambda skill, q: skill.answer(q) if skill.answer else None)


def recording_skill(question: str, names: Sequence[str]) -> Answerer | None:
    """How the first of ``names`` that knows ``question`` (about a recording as a whole; its last
    paragraph) answers it from the recording's transcript, or None: the LLM answers."""
    return _first(question, names,
                  lambda skill, q: skill.about_recording(q) if skill.about_recording else None)


# ---------------------------------------------------------------- arithmetic

# what may come before and after the sum itself ("what do you get for", "equal to"), longest first
_LEADS = sorted((
    "what is", "what's", "whats", "what are", "how much is", "how much are", "what do you get for",
    "what do you get if you", "what do you get when you", "what do i get for", "what does",
    "calculate", "compute", "work out", "tell me", "can you tell me", "could you tell me",
    "please", "hey", "okay", "ok", "so", "quick question", "do you know",
), key=len, reverse=True)
_TAILS = sorted(("equal", "equals", "equal to", "make", "makes", "please", "in total", "altogether",
                 "come to", "come out to"), key=len, reverse=True)

_INFIX = {  # operator words -> (symbol, precedence)
    ("plus",): ("+", 1), ("+",): ("+", 1), ("minus",): ("-", 1), ("-",): ("-", 1), ("less",): ("-", 1),
    ("take", "away"): ("-", 1), ("times",): ("*", 2), ("x",): ("*", 2), ("*",): ("*", 2), ("×",): ("*", 2),
    ("multiplied", "by"): ("*", 2), ("divided", "by"): ("/", 2), ("over",): ("/", 2), ("/",): ("/", 2),
    ("÷",): ("/", 2), ("to", "the", "power", "of"): ("^", 3), ("^",): ("^", 3),
}
_OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by", "^": "to the power of"}
# "add 3 and 4", "subtract 3 from 10": verb, first operand, joiner, second, and the operation's order
_VERBS = {"add": (("and", "to"), "+", False), "subtract": (("from",), "-", True),
          "multiply": (("by", "and"), "*", False), "divide": (("by",), "/", False)}
_OF_AND = {"sum": "+", "product": "*", "difference": "-"}  # "the sum of 3 and 4"
_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+|[a-z]+(?:'[a-z]+)?|[-+*/×÷^%]")


class _NotArithmetic(Exception):
    pass


@dataclass(frozen=True)
class _Node:
    text: str  # how the reply says it
    value: Fraction | None  # None: undefined (a division by zero)
    computed: bool = True  # False: a number as said, with no operation on it


def _number_text(value: Fraction) -> str:
    """Digits as a reply shows them: thousands grouped (so a spoken form never reads 1234 as a year),
    at most six decimals ("about" when rounded), "minus" for a negative."""
    if value < 0:
        size = _number_text(-value)
        return "about minus " + size.removeprefix("about ") if size.startswith("about ") else "minus " + size
    if value.denominator == 1:
        return f"{value.numerator:,}"
    with localcontext() as context:
        context.prec = len(str(value.numerator // value.denominator)) + 8
        text = f"{Decimal(value.numerator) / value.denominator:,.6f}".rstrip("0").rstrip(".")
    return text if Fraction(text.replace(",", "")) == value else "about " + text


class _Parser:
    """Recursive descent over the words of one question: expression := term ((+|-) term)*,
    term := power ((*|/) power)*, power := unary (^ unary | squared | cubed)?, unary := minus unary |
    the square root of unary | the sum/product of x and y | the difference between x and y |
    verb x joiner y | number (percent of unary)?."""

    def __init__(self, words: list[str]):
        self.words, self.i = words, 0

    def peek(self, *words: str) -> bool:
        return tuple(self.words[self.i : self.i + len(words)]) == words

    def take(self, *words: str) -> bool:
        if self.peek(*words):
            self.i += len(words)
            return True
        return False

    def operator(self, level: int) -> str | None:
        for words, (symbol, precedence) in _INFIX.items():
            if precedence == level and self.take(*words):
                return symbol
        return None

    def expression(self, level: int = 1) -> _Node:
        if level == 3:  # powers bind right to left: 2 ^ 3 ^ 2 = 2 ^ 9
            node = self.unary()
            if self.operator(3) is not None:
                node = _apply("^", node, self.expression(3))
        else:
            node = self.expression(level + 1)
            while (symbol := self.operator(level)) is not None:
                node = _apply(symbol, node, self.expression(level + 1))
        while level == 3 and (power := 2 if self.take("squared") else 3 if self.take("cubed") else 0):
            node = _apply("^", node, _Node(str(power), Fraction(power)), said=f"{node.text} "
                          + ("squared" if power == 2 else "cubed"))
        return node

    def unary(self) -> _Node:
        if self.take("minus") or self.take("negative") or self.take("-"):
            inner = self.unary()
            return _Node("minus " + inner.text, None if inner.value is None else -inner.value, inner.computed)
        self.take("the")
        if self.take("square", "root", "of"):
            inner = self.unary()
            if inner.value is None or inner.value < 0:
                raise _NotArithmetic
            root = _square_root(inner.value)
            return _Node(f"the square root of {inner.text}", root)
        for noun, symbol in _OF_AND.items():
            if self.take(noun, "of") or (noun == "difference" and self.take(noun, "between")):
                left = self.expression()
                if not self.take("and"):
                    raise _NotArithmetic
                return _apply(symbol, left, self.expression())
        for verb, (joiners, symbol, reverse) in _VERBS.items():
            if self.take(verb):
                left = self.expression()
                if not any(self.take(j) for j in joiners):
                    raise _NotArithmetic
                right = self.expression()
                return _apply(symbol, right, left) if reverse else _apply(symbol, left, right)
        found = read_number(self.words, self.i)
        if found is None:
            raise _NotArithmetic
        value, self.i = found
        node = _Node(_number_text(value), value, computed=False)
        if self.take("percent", "of") or self.take("%", "of"):
            whole = self.unary()
            value = None if whole.value is None else value * whole.value / 100
            return _Node(f"{node.text} percent of {whole.text}", value)
        return node


def _square_root(value: Fraction) -> Fraction:
    top, bottom = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if top * top == value.numerator and bottom * bottom == value.denominator:
        return Fraction(top, bottom)
    return Fraction(math.sqrt(value))  # OverflowError past floats: not answered


def _apply(symbol: str, left: _Node, right: _Node, said: str | None = None) -> _Node:
    said = said or f"{left.text} {_WORDS[symbol]} {right.text}"
    a, b = left.value, right.value
    if a is None or b is None or (symbol == "/" and b == 0):
        return _Node(said, None)
    if symbol == "^":
        digits = abs(b) * max(a.numerator.bit_length(), a.denominator.bit_length()) * 0.302
        if b.denominator != 1 or abs(b) > 1000 or digits > 5000 or (a == 0 and b < 0):
            raise _NotArithmetic  # a whole power of a size worth saying
        return _Node(said, a ** int(b))
    return _Node(said, _OPERATIONS[symbol](a, b))


def _strip(words: list[str], phrases: Sequence[str], at_start: bool) -> list[str]:
    changed = True
    while changed and words:
        changed = False
        for phrase in phrases:
            p = phrase.split()
            if (words[: len(p)] if at_start else words[-len(p):]) == p and len(words) > len(p):
                words = words[len(p):] if at_start else words[: -len(p)]
                changed = True
                break
    return words


# words a transcript writes for a number it misheard ("eight times free"): read as that number where
# one must stand (after an operator or a tens word, before an operator or the end)
_SOUNDS_LIKE = {"free": "three", "tree": "three", "too": "two", "to": "two", "for": "four", "fore": "four",
                "won": "one", "ate": "eight"}
_OPERATOR_WORDS = {words[0] for words in _INFIX} | {"squared", "cubed", "percent", "%"}
_MATH_WORDS = ({w for words in _INFIX for w in words} | set(_VERBS) | set(_OF_AND)
               | {"square", "root", "squared", "cubed", "percent", "between", "negative"})
_TENS_WORDS = {"twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"}


def _spelled(words: list[str]) -> list[str]:
    """Whole numerals as words ("43" -> "forty three"), so "40 for" can read as forty four."""
    out = []
    for word in words:
        plain = word.replace(",", "")
        out += number_to_words(int(plain)).split() if plain.isdigit() and len(plain) <= 15 else [word]
    return out


def _heard_as_numbers(words: list[str]) -> list[str]:
    out = list(words)
    for i, word in enumerate(words):
        before, after = words[i - 1] if i else None, words[i + 1] if i + 1 < len(words) else None
        if (word in _SOUNDS_LIKE and (before is None or before in _OPERATOR_WORDS or before in _TENS_WORDS)
                and (after is None or after in _OPERATOR_WORDS)):
            out[i] = _SOUNDS_LIKE[word]
    return out


def _question_bodies(words: list[str]) -> list[list[str]]:
    """Where the sum may start: after the known leads, or, in a question that starts "what" or "how",
    after any of its first words that end a lead ("what do you debt for": a misheard "get") where the
    words left out say nothing of the sum (no number, no operation: "the square root of" stays)."""
    bodies = [_strip(words, _LEADS, True)]
    if words and words[0] in ("what", "how", "what's", "whats"):
        ends = ("is", "are", "for", "of")
        bodies += [words[k:] for k in range(1, min(len(words), 7)) if words[k - 1] in ends
                   and not any(w in _MATH_WORDS or read_number([w]) for w in words[:k])]
    return bodies


def _parse(words: list[str]) -> _Node | None:
    parser = _Parser(_heard_as_numbers(words))
    try:
        node = parser.expression()
    except _NotArithmetic:
        return None
    return node if parser.i == len(words) and node.computed else None


def arithmetic(question: str) -> str | None:
    """``what is sixty nine plus thirty nine`` -> ``69 plus 39 is 108.``; None when the question is
    not a sum from start to end (a single number alone is not one)."""
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", question.replace("%", " % "))
    words = _strip(_spelled(_TOKEN.findall(text)), _TAILS, False)
    try:
        node = next((n for body in _question_bodies(words) if body and (n := _parse(body))), None)
        return None if node is None else _reply(node)
    except OverflowError:  # a number past what a float holds, where one is needed (a square root)
        return None


def _reply(node: _Node) -> str:
    said = node.text[:1].upper() + node.text[1:]
    if node.value is None:
        return f"{said} is undefined: a number cannot be divided by zero."
    if abs(node.value) >= 10**18 or 0 < abs(node.value) < Fraction(1, 10**6):
        mantissa, exponent = f"{Decimal(node.value.numerator) / node.value.denominator:.5e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        exact = Fraction(Decimal(mantissa)) * Fraction(10) ** int(exponent) == node.value
        size = f"{mantissa} times 10 to the power of {int(exponent)}".replace("-", "minus ")
        return f"{said} is {'' if exact else 'about '}{size}."
    return f"{said} is {_number_text(node.value)}."


register_skill(Skill("arithmetic", "sums, differences, products, quotients, powers, square roots and "
                     "percentages, said in words or digits", answer=arithmetic))


# ---------------------------------------------------------------- clock

_TIME = re.compile(r"(what|what's|whats) (is )?the time( now| right now)?|what time is it( now| right now)?|"
                   r"(can you |could you )?tell me the time|do you know what time it is")
_DATE = re.compile(r"(what|what's|whats) (is )?(the date|today's date)( today)?|"
                   r"what day is (it|today)( today)?|(what|what's|whats) (is )?today|"
                   r"what day of the week is (it|today)|"
                   r"(can you |could you )?tell me (the|today's) date")


def clock(question: str, now: Callable[[], datetime] = datetime.now) -> str | None:
    """The host's local time or date, for "what time is it" or "what's the date today"."""
    if _TIME.fullmatch(question):
        moment = now()
        return f"It is {moment.hour % 12 or 12}:{moment.minute:02d} {'a.m.' if moment.hour < 12 else 'p.m.'}"
    if _DATE.fullmatch(question):
        moment = now()
        return f"Today is {moment:%A, %B} {moment.day}, {moment.year}."
    return None


register_skill(Skill("clock", "the time and the date (this computer's clock)", answer=lambda q: clock(q)))


# ---------------------------------------------------------------- gist

_RECORDING = (r"(it|this|that|(this|the|that) (recording|audio|clip|file|talk|speech|message|conversation|"
              r"meeting|lecture|call|video|podcast|episode|interview|passage|story|speaker|voice message))")
_PEOPLE = r"(it|he|she|they|you|the (speaker|speakers|people|person|man|woman))"
_GIST = re.compile("|".join((
    rf"((can|could) you )?(please )?(summari[sz]e|sum up|recap)( {_RECORDING})?( for me| briefly| please)*",
    r"((can|could) you )?(please )?give (me )?(a|the) (short |brief |quick )?"
    rf"(summary|gist|overview|rundown|recap)( of {_RECORDING})?( please)?",
    rf"(what's|whats|what is|what was) {_RECORDING} (all )?about",
    rf"(what's|whats|what is|what was) the (main )?(topic|subject|point|gist|theme|idea)( of {_RECORDING})?",
    rf"(what|what's|whats)( is| are| was| were)? {_PEOPLE} (talking about|speaking about|on about|saying)",
    rf"what (does|did) {_RECORDING} say",
    rf"what did {_PEOPLE} (say|talk about|speak about)",
    rf"(what is|what was|what's|whats) said( in {_RECORDING})?",
    rf"tell me (about|what is in|what's in) {_RECORDING}",
    rf"(describe|outline) {_RECORDING}",
)))


def lead(transcript: str, words: int = 30, most: int = 60) -> str:
    """A transcript's opening sentences, as said: sentences while they stay under ``words`` words (at least
    one, at most three), cut with "..." at ``most`` words; "The recording does not say." for nothing heard."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(transcript.split())) if s]
    if not sentences:
        return NOT_STATED
    taken = [sentences[0]]
    for sentence in sentences[1:3]:
        if len(" ".join(taken + [sentence]).split()) > words:
            break
        taken.append(sentence)
    said = " ".join(taken).split()
    return " ".join(said) if len(said) <= most else " ".join(said[:most]) + "..."


register_skill(Skill("gist", "what a recording is about, or a summary of it: its opening sentences, quoted",
                     about_recording=lambda q: lead if _GIST.fullmatch(q) else None))
