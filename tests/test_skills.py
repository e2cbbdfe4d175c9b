"""Skills answer the questions they know exactly, and leave every other message to the LLM."""

import random
from datetime import datetime
from fractions import Fraction

import pytest

from speechllm.speechlm.skills import (
    SKILLS,
    arithmetic,
    check_skills,
    clock,
    lead,
    recording_skill,
    skill_reply,
)
from speechllm.text_normalize import normalize, number_to_words, read_number


def test_read_number_inverts_number_to_words_and_stops_where_the_number_does():
    rng = random.Random(0)
    for n in [*range(2500), *(rng.randrange(10**13) for _ in range(500))]:
        words = number_to_words(n).split() + ["plus"]
        assert read_number(words) == (n, len(words) - 1), n
    said = {"one hundred and five": (105, 4), "a hundred": (100, 2), "a thousand and one": (1001, 4),
            "twelve hundred": (1200, 2), "two point five": (Fraction(5, 2), 3), "two three": (2, 1),
            "ten twenty": (10, 1), "zero five": (0, 1), "1,234": (1234, 1), "2.5": (Fraction(5, 2), 1),
            "seven plus": (7, 1), "one thousand and": (1000, 2)}
    for text, expected in said.items():
        assert read_number(text.split()) == expected, text
    assert read_number("the end".split()) is None and read_number(["a", "dog"]) is None
    assert read_number("it is five".split(), 2) == (5, 3)


@pytest.mark.parametrize(("question", "reply"), [
    ("what is sixty nine plus thirty nine", "69 plus 39 is 108."),
    ("how much is 69 + 39", "69 plus 39 is 108."),
    ("what do you get for eight times three", "8 times 3 is 24."),
    ("what's 7 x 8", "7 times 8 is 56."),
    ("what is twenty-one minus eight equal to", "21 minus 8 is 13."),
    ("how much is one hundred forty four divided by twelve", "144 divided by 12 is 12."),
    ("what is 2 plus 3 times 4", "2 plus 3 times 4 is 14."),  # precedence
    ("what is minus five plus three", "Minus 5 plus 3 is minus 2."),
    ("what is 1 divided by 3", "1 divided by 3 is about 0.333333."),
    ("what is 3.5 times 2", "3.5 times 2 is 7."),
    ("what is 10% of 50", "10 percent of 50 is 5."),
    ("what is the square root of 144", "The square root of 144 is 12."),
    ("what is 5 squared", "5 squared is 25."),
    ("what is two to the power of ten", "2 to the power of 10 is 1,024."),
    ("what is 2 ^ 100", "2 to the power of 100 is about 1.26765 times 10 to the power of 30."),
    ("what is a hundred times a thousand", "100 times 1,000 is 100,000."),
    ("add three and four", "3 plus 4 is 7."),
    ("subtract 3 from 10", "10 minus 3 is 7."),
    ("multiply 6 by 7", "6 times 7 is 42."),
    ("what is the sum of 3 and 4", "3 plus 4 is 7."),
    ("what is the difference between 10 and 3", "10 minus 3 is 7."),
    ("what is 5 divided by 0", "5 divided by 0 is undefined: a number cannot be divided by zero."),
    ("what is 2 ^ 3 ^ 2", "2 to the power of 3 to the power of 2 is 512."),  # powers bind to the right
    ("what is minus 1 divided by 3", "Minus 1 divided by 3 is about minus 0.333333."),
    ("what is minus 3 divided by 10 to the power of 7",
     "Minus 3 divided by 10 to the power of 7 is minus 3 times 10 to the power of minus 7."),
    ("what is 99999999999999999999999999999.5 times 2",
     "99,999,999,999,999,999,999,999,999,999.5 times 2 is about 2 times 10 to the power of 29."),
    # what Whisper writes for a sum it half heard: number homophones, a misheard lead
    ("what do you get for 11 times too", "11 times 2 is 22."),
    ("how much is 40 for minus 16", "44 minus 16 is 28."),
    ("what do you debt for 43 minus 30", "43 minus 30 is 13."),
])
def test_arithmetic_answers_sums_said_in_words_or_digits(question, reply):
    assert arithmetic(question) == reply


@pytest.mark.parametrize("question", [
    "what is one", "what is the capital of france", "what is the sum of our costs",
    "tell me three times you were wrong", "is 5 plus 5 ten", "i have 3 plus 4",
    "what is 12 divided by 3a", "what is the population of 3 plus 4 countries", "what is 2 to 3",
    "what is 5 to the power of 2000",
    "what is 10 to the power of 1000 to the power of 1000",  # too large to be worth computing
    "what is the square root of 2 to the power of 2000",  # past a float
    "what is the square root of 10 to the power of 600",  # not answered as "10 to the power of 600"
])
def test_arithmetic_leaves_other_questions_to_the_llm(question):
    assert arithmetic(question) is None


def test_a_sum_reply_reads_back_as_its_answer():
    """The reply's spoken form holds the answer as the scorer writes it (no year reading of 1,200)."""
    reply = arithmetic("what is twelve hundred plus one")
    assert reply == "1,200 plus 1 is 1,201." and normalize(reply).endswith("is one thousand two hundred one")


def test_clock_tells_the_time_and_the_date():
    now = lambda: datetime(2026, 12, 5, 15, 7)  # noqa: E731
    for question in ("what time is it", "what's the time", "what is the time right now", "tell me the time"):
        assert clock(question, now) == "It is 3:07 p.m."
    assert clock("what time is it", lambda: datetime(2026, 1, 2, 0, 30)) == "It is 12:30 a.m."
    for question in ("what's the date today", "what day is it", "what is today's date"):
        assert clock(question, now) == "Today is Saturday, December 5, 2026."
    assert clock("what time is the train", now) is None and clock("what day is christmas", now) is None


def test_skill_reply_reads_the_last_paragraph_with_the_named_skills_only():
    history = "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\nWhat is 2 + 2?"
    assert skill_reply(history, ["arithmetic"]) == "2 plus 2 is 4."
    assert skill_reply("What is 2 + 2?", ["clock"]) is None
    assert skill_reply("What is 2 + 2?\nAnd why?", ["arithmetic"]) is None
    assert skill_reply("", list(SKILLS)) is None
    check_skills(["arithmetic", "clock"])
    with pytest.raises(ValueError, match="unknown skill.*calendar.*known: arithmetic, clock"):
        check_skills(["calendar"])


SAID = "Please send me the report before the meeting. It is due on Friday. See you there."


@pytest.mark.parametrize("question", [
    "What is this recording about?", "what's it about", "Summarize the recording.", "Summarise this",
    "Can you give me a short summary of the recording?", "What are they talking about?",
    "What is the main topic?", "What did the speaker say?", "What does it say?", "Sum up",
    "Tell me about the recording.", "Earlier in this conversation:\nUser: hi\n\nWhat is the call about?",
])
def test_gist_answers_questions_about_the_whole_recording_with_its_opening_sentences(question):
    answer = recording_skill(question, ["arithmetic", "clock", "gist"])
    assert answer is not None and answer(SAID) == SAID


@pytest.mark.parametrize("question", [
    "What time is the meeting?", "Who is speaking?", "What did he say about the weather?",
    "When is the report due?", "What is 2 + 2?", "Summarize the second part.", "What is the weather about?",
])
def test_gist_leaves_questions_about_one_thing_in_the_recording_to_the_llm(question):
    assert recording_skill(question, ["arithmetic", "clock", "gist"]) is None


def test_a_gist_quotes_the_opening_sentences_and_only_recording_questions_reach_it():
    assert lead(SAID) == SAID  # three short sentences: all of them
    sentences = [f"Sentence number {i} has a few more words in it." for i in range(10)]
    assert lead(" ".join(sentences)) == " ".join(sentences[:3])  # three sentences, 27 words
    assert lead("One two three. " + "word " * 40) == "One two three."  # the next would pass 30 words
    assert lead("word " * 80) == " ".join(["word"] * 60) + "..."  # one long sentence, cut
    assert lead("  ") == "The recording does not say."  # nothing heard
    assert recording_skill("What is this recording about?", ["arithmetic", "clock"]) is None  # not named
    assert skill_reply("What is this recording about?", list(SKILLS)) is None  # a typed message: no recording
    assert recording_skill("What is 2 + 2?", list(SKILLS)) is None  # arithmetic answers messages only
