"""Grounded passage QA: a short spoken passage of everyday facts and a text question about it that the
passage either answers (the answer is a span of it) or leaves open (the answer is :data:`NOT_STATED`).

A model taught only answerable questions answers every question, making up what the recording never
said ("When is the meeting?" about "Please send me the report before the meeting." -> "At ten twenty
five p.m."). Here about a third of the questions are not answered by the passage, in three kinds:

- *near misses*: about something the passage mentions, asking for a detail it leaves out (where the
  meeting is, when the train arrives, what the bill was for);
- *elsewhere*: a question another kind of passage would answer;
- *generic*: about the recording itself (who is speaking, when it was recorded).

Every text is in :func:`speechllm.text_normalize.spoken_form`: the facts' pieces are spoken before the
sentence is built from them, so that each answer is a span of the passage.

A passage tells one to three facts (``passages``) or, for long recordings, five to nine
(``passages-long``, :data:`LONG`), each of another kind and, in a long one, each about other people,
so that no question has two answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from speechllm.data_recipes.texts import _DAYS as DAYS
from speechllm.data_recipes.texts import NAMES, PassageQA, _ordinal, story
from speechllm.speechlm.tasks import NOT_STATED
from speechllm.text_normalize import number_to_words, spoken_form

UNANSWERED_SHARE = 0.35  # of questions; of those: near misses, elsewhere, generic
UNANSWERED_KINDS = (("near", 0.5), ("elsewhere", 0.3), ("generic", 0.2))

GENERIC = (
    "Who is speaking?",
    "What is the speaker's name?",
    "How old is the speaker?",
    "Where was this recorded?",
    "When was this recorded?",
    "What is the speaker's phone number?",
    "Why is the speaker calling?",
)

_MORE_NAMES = (
    "Aisha Beatrice Chloe Fatima Ingrid Keiko Lucia Mei Nadia Priya Sofia Tara Amir Ben Chen David Erik "
    "George Jamal Leo Marco Omar Raj Tom Yuki Wei"
).split()
PEOPLE = tuple(NAMES) + tuple(_MORE_NAMES)
CITIES = ("Boston Denver Leeds Lyon Porto Oslo Dublin Austin Seattle Glasgow Madrid Vienna Toronto "
          "Chicago").split()
EVENTS = ("meeting", "interview", "dentist appointment", "concert", "party", "exam", "workshop", "dinner")
ACTIONS = ("send me the report", "book a table", "print the tickets", "call the plumber", "water the plants",
           "pick up the keys", "pay the rent", "reply to the email", "buy some milk", "clean the kitchen")
THINGS = "lamp chair kettle jacket bicycle umbrella backpack camera printer sofa watch guitar".split()
SHOPS = ("bakery", "pharmacy", "library", "post office", "bank", "museum", "supermarket", "bookshop", "cafe",
         "gym", "swimming pool")
GATHERINGS = ("festival", "lecture", "wedding", "market", "parade", "charity run")
VENUES = "town hall,park,old church,harbor,stadium,school,community center".split(",")
TEAMS = ("the Lions", "the Tigers", "the Rovers", "the Eagles", "the Sharks", "the Wolves", "the Falcons")
JOBS = "nurse teacher engineer baker pilot lawyer farmer chef dentist plumber".split()
COLORS = "red blue green black white silver yellow".split()
WEATHER = "sunny cloudy rainy windy foggy snowy".split()
PETS = "dog cat rabbit parrot tortoise hamster".split()
PET_NAMES = "Max Bella Charlie Luna Oscar Daisy Milo Ruby Pepper Biscuit".split()


@dataclass(frozen=True)
class Fact:
    sentence: str
    questions: tuple[tuple[str, str], ...]  # (question, answer): answered by the sentence, answer a span
    near_misses: tuple[str, ...]  # about the same thing, not answered by it


def _pick(rng: np.random.Generator, pool) -> str:
    return str(pool[int(rng.integers(len(pool)))])


def _time(rng: np.random.Generator) -> str:
    hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50]))
    return spoken_form(f"{hour}:{minute:02d} {_pick(rng, ['am', 'pm'])}")


def _money(rng: np.random.Generator, top: int = 100) -> str:
    if rng.random() < 0.5:
        return spoken_form(f"${int(rng.integers(1, top))}")
    return spoken_form(f"${int(rng.integers(0, top))}.{int(rng.integers(1, 100)):02d}")


def _number(rng: np.random.Generator, low: int, high: int) -> str:
    return number_to_words(int(rng.integers(low, high)))


def _appointment(rng: np.random.Generator) -> Fact:
    event, day, time = _pick(rng, EVENTS), _pick(rng, DAYS), _time(rng)
    return Fact(f"The {event} is on {day} at {time}.",
                ((f"When is the {event}?", f"{day} at {time}"), (f"What day is the {event}?", day),
                 (f"What time is the {event}?", time)),
                (f"Where is the {event}?", f"Who is the {event} with?", f"How long will the {event} take?"))


def _errand(rng: np.random.Generator) -> Fact:
    action, event = _pick(rng, ACTIONS), _pick(rng, EVENTS)
    return Fact(f"Please {action} before the {event}.",
                ((f"What should I do before the {event}?", action),),
                (f"When is the {event}?", f"Where is the {event}?", f"Who will be at the {event}?"))


def _train(rng: np.random.Generator) -> Fact:
    city, time, platform = _pick(rng, CITIES), _time(rng), _number(rng, 1, 13)
    return Fact(f"The train to {city} leaves at {time} from platform {platform}.",
                ((f"When does the train to {city} leave?", time),
                 (f"Which platform does the train to {city} leave from?", f"platform {platform}"),
                 ("Where is the train going?", city)),
                (f"When does the train arrive in {city}?", f"How much is a ticket to {city}?",
                 f"How long is the journey to {city}?"))


def _price(rng: np.random.Generator) -> Fact:
    thing, money = _pick(rng, THINGS), _money(rng, 300)
    return Fact(f"The {thing} costs {money}.",
                ((f"How much does the {thing} cost?", money), (f"What costs {money}?", thing)),
                (f"Where can I buy the {thing}?", f"What color is the {thing}?", f"Who made the {thing}?"))


def _opening_hours(rng: np.random.Generator) -> Fact:
    shop, opens, closes = _pick(rng, SHOPS), _time(rng), _time(rng)
    return Fact(f"The {shop} opens at {opens} and closes at {closes}.",
                ((f"When does the {shop} open?", opens), (f"When does the {shop} close?", closes)),
                (f"Where is the {shop}?", f"Is the {shop} open on {_pick(rng, DAYS)}?",
                 f"What is the phone number of the {shop}?"))


def _birth(rng: np.random.Generator) -> Fact:
    name, city, year = _pick(rng, PEOPLE), _pick(rng, CITIES), spoken_form(str(int(rng.integers(1920, 2024))))
    return Fact(f"{name} was born in {city} in {year}.",
                ((f"Where was {name} born?", city), (f"When was {name} born?", year),
                 (f"In which year was {name} born?", year)),
                (f"Where does {name} live now?", f"What does {name} do for a living?",
                 f"Who are {name}'s parents?"))


def _job(rng: np.random.Generator) -> Fact:
    name, job, city = _pick(rng, PEOPLE), _pick(rng, JOBS), _pick(rng, CITIES)
    return Fact(f"{name} works as a {job} in {city}.",
                ((f"What does {name} do for a living?", job), (f"What is {name}'s job?", job),
                 (f"Where does {name} work?", city)),
                (f"How old is {name}?", f"How long has {name} been a {job}?", f"Where was {name} born?"))


def _bill(rng: np.random.Generator) -> Fact:
    name, total, part = _pick(rng, PEOPLE), _money(rng, 200), _money(rng, 60)
    return Fact(f"The bill came to {total}, and {name} paid {part} of it.",
                (("How much was the bill?", total), (f"How much did {name} pay?", part),
                 ("Who paid part of the bill?", name)),
                ("What did they eat?", "Where did they have dinner?", "Who paid the rest of the bill?"))


def _match(rng: np.random.Generator) -> Fact:
    winner, loser = (str(t) for t in rng.choice(TEAMS, size=2, replace=False))
    low = int(rng.integers(0, 5))
    score = f"{number_to_words(low + int(rng.integers(1, 4)))} to {number_to_words(low)}"
    day = _pick(rng, DAYS)
    return Fact(f"On {day}, {winner} beat {loser} {score}.",
                (("Who won the match?", winner), ("What was the score?", score),
                 (f"Who did {winner} beat?", loser), ("When was the match?", day)),
                ("Who scored the first goal?", "Where was the match played?",
                 "How many people watched the match?"))


def _forecast(rng: np.random.Generator) -> Fact:
    weather, high = _pick(rng, WEATHER), spoken_form(f"{int(rng.integers(-5, 40))} degrees")
    return Fact(f"Tomorrow will be {weather} with a high of {high}.",
                (("What will the weather be like tomorrow?", weather),
                 ("How warm will it be tomorrow?", high),
                 ("What will the high be tomorrow?", high)),
                ("What was the weather like yesterday?", "What will the weather be like next week?",
                 "What will the low be tomorrow?"))


def _room(rng: np.random.Generator) -> Fact:
    room, other, floor = rng.choice(np.arange(1, 500), size=3, replace=False)
    room_, other_ = number_to_words(int(room)), number_to_words(int(other))
    floor_ = spoken_form(f"the {_ordinal(int(floor) % 20 + 1)} floor")
    return Fact(f"Room {room_} is on {floor_}.",
                ((f"Which floor is room {room_} on?", floor_), (f"Where is room {room_}?", floor_)),
                (f"Which floor is room {other_} on?", "Where is the lift?", f"Who works in room {room_}?"))


def _crowd(rng: np.random.Generator) -> Fact:
    gathering, venue = _pick(rng, GATHERINGS), _pick(rng, VENUES)
    count = spoken_form(f"{int(rng.integers(2, 20000)):,}")
    return Fact(f"About {count} people came to the {gathering} at the {venue}.",
                ((f"How many people came to the {gathering}?", count),
                 (f"Where was the {gathering}?", f"the {venue}")),
                (f"When was the {gathering}?", f"Who organised the {gathering}?",
                 f"How much were tickets for the {gathering}?"))


def _car(rng: np.random.Generator) -> Fact:
    name, color = _pick(rng, PEOPLE), _pick(rng, COLORS)
    return Fact(f"{name}'s new car is {color}.",
                ((f"What color is {name}'s car?", color), (f"What color is {name}'s new car?", color)),
                (f"How much did {name}'s car cost?", f"What make is {name}'s car?",
                 f"When did {name} buy the car?"))


def _trip(rng: np.random.Generator) -> Fact:
    miles, city, hours = _number(rng, 20, 900), _pick(rng, CITIES), _number(rng, 2, 14)
    return Fact(f"We drove {miles} miles to {city} in {hours} hours.",
                (("How far did we drive?", f"{miles} miles"), ("Where did we drive to?", city),
                 ("How long did the drive take?", f"{hours} hours")),
                ("Who was driving?", "Where did we stay?", f"Why did we go to {city}?"))


def _pet(rng: np.random.Generator) -> Fact:
    name, pet, pet_name = _pick(rng, PEOPLE), _pick(rng, PETS), _pick(rng, PET_NAMES)
    return Fact(f"{name} has a {pet} called {pet_name}.",
                ((f"What is the name of {name}'s {pet}?", pet_name), (f"What pet does {name} have?", pet)),
                (f"How old is {name}'s {pet}?", f"What does {name}'s {pet} eat?",
                 f"What color is {pet_name}?"))


def _story(rng: np.random.Generator) -> Fact:
    passage, answered, unanswered = story(rng)
    return Fact(passage, tuple(answered), tuple(unanswered))


FACTS: tuple[Callable[[np.random.Generator], Fact], ...] = (
    _appointment, _errand, _train, _price, _opening_hours, _birth, _job, _bill, _match, _forecast, _room,
    _crowd, _car, _trip, _pet, _story,
)


SHORT = (1, 3)  # facts told in a passage: fewest, most
LONG = (5, 9)


def _people(fact: Fact) -> set[str]:
    return {w for w in re.findall(r"[A-Z][a-z]+", fact.sentence) if w in PEOPLE}


def _facts(rng: np.random.Generator, told: tuple[int, int]) -> list[Fact]:
    """Facts of distinct kinds, the last one untold (drawn for "elsewhere" questions only); past three,
    each told fact about other people than the rest ("Where does Amir work?" answered once)."""
    while True:
        kinds = rng.choice(len(FACTS), size=int(rng.integers(told[0], told[1] + 1)) + 1, replace=False)
        facts = [FACTS[int(k)](rng) for k in kinds]
        people = [_people(f) for f in facts[:-1]]
        if told[1] <= SHORT[1] or sum(map(len, people)) == len(set().union(*people)):
            return facts


def grounded_qa(rng: np.random.Generator, told: tuple[int, int] = SHORT) -> tuple[PassageQA, str]:
    """A passage of ``told`` facts (fewest, most) and one question: (the passage QA, its kind:
    ``answered``, or the unanswered kind ``near`` / ``elsewhere`` / ``generic``)."""
    facts = _facts(rng, told)
    told, untold = facts[:-1], facts[-1]
    passage = re.sub(r"\.\.(?=\s|$)", ".", " ".join(f.sentence for f in told))  # "at ten a.m.." -> "a.m."
    answered = [(q, a) for f in told for q, a in f.questions]
    asked = {q for q, _ in answered}
    if rng.random() >= UNANSWERED_SHARE:
        question, answer = answered[int(rng.integers(len(answered)))]
        return PassageQA(passage, question, answer), "answered"
    names, weights = zip(*UNANSWERED_KINDS, strict=True)
    kind = str(rng.choice(names, p=np.asarray(weights) / sum(weights)))
    pools = {"near": [q for f in told for q in f.near_misses], "elsewhere": [q for q, _ in untold.questions],
             "generic": list(GENERIC)}
    pool = [q for q in pools[kind] if q not in asked]
    if not pool:  # a story told in full leaves nothing near it open
        kind, pool = "generic", pools["generic"]
    return PassageQA(passage, _pick(rng, pool), NOT_STATED), kind
