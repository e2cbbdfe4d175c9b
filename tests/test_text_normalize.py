import pytest

from speechllm.text_normalize import (
    normalize,
    number_to_words,
    ordinal_to_words,
    spoken_form,
    year_to_words,
)


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (23, "twenty three"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (2005, "two thousand five"),
        (1_234_567, "one million two hundred thirty four thousand five hundred sixty seven"),
        (-4, "minus four"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_ordinals_and_years():
    assert [ordinal_to_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 100)] == [
        "first",
        "second",
        "third",
        "fifth",
        "twelfth",
        "twentieth",
        "twenty first",
        "one hundredth",
    ]
    assert year_to_words(1909) == "nineteen oh nine"
    assert year_to_words(1900) == "nineteen hundred"
    assert year_to_words(1984) == "nineteen eighty four"
    assert year_to_words(2024) == "twenty twenty four"
    assert year_to_words(2007) == "two thousand seven"


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("I have 23 apples.", "I have twenty three apples."),
        ("It costs $3.50.", "It costs three dollars and fifty cents."),
        ("$1 and $0.25", "one dollar and twenty five cents"),
        ("$3.5 million", "three point five million dollars"),
        ("£2.01", "two pounds and one penny"),
        ("5% of 3.25%", "five percent of three point two five percent"),
        ("at 3:05 pm", "at three oh five p.m."),
        ("at 10:00.", "at ten o'clock."),
        ("at 7 AM", "at seven a.m."),
        ("at 9.15 a.m.", "at nine fifteen a.m."),
        ("on March 5th, 1909", "on March fifth, nineteen oh nine"),
        ("on May 3, 2024", "on May third, twenty twenty four"),
        ("the 21st floor", "the twenty first floor"),
        ("2,000 people", "two thousand people"),
        ("7 - 3 = 4", "seven minus three equals four"),
        ("6 x 7", "six times seven"),
        ("1789-1797", "seventeen eighty nine to seventeen ninety seven"),
        ("Mr. Smith & Dr. Jones", "Mister Smith and Doctor Jones"),
        ("it was -5 degrees", "it was minus five degrees"),
        ("He said \u201cdon\u2019t\u201d \u2014 twice", 'He said "don\'t", twice'),
    ],
)
def test_spoken_form(text, spoken):
    assert spoken_form(text) == spoken


def test_normalize_is_the_scoring_form():
    assert normalize("Hello, World!  It's 23.") == "hello world it's twenty three"
    assert normalize("forget-me-not") == "forget me not"
    assert normalize("'quoted' words") == "quoted words"
    # a hypothesis in digits and a reference in words score the same
    assert normalize("I paid $3.50 at 3:05 PM in 1999.") == normalize(
        "I paid three dollars and fifty cents at three oh five p.m. in nineteen ninety nine"
    )
    assert normalize("twenty-three") == normalize("23") == "twenty three"


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on March 14, 2022 at 9:30 am.",
        "About 45% of 2,000 people paid $12.99.",
        "Room 12 is on the 3rd floor; call 555 before Monday!",
        "Plain words only.",
    ],
)
def test_normalize_is_idempotent_through_spoken_form(text):
    assert normalize(spoken_form(text)) == normalize(text)
    assert spoken_form(spoken_form(text)) == spoken_form(text)


def test_other_languages_are_only_cleaned():
    assert (
        spoken_form("  Y  dijo  Dios:\u00a0Sea la luz 3 veces ", lang="es")
        == "Y dijo Dios: Sea la luz 3 veces"
    )
    assert normalize("\u00bfQu\u00e9 es esto?", lang="es") == "qu\u00e9 es esto"
