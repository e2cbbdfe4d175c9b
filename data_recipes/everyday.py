"""Everyday Spanish sentences with their English translations, from a small bilingual grammar.

Each template is written in both languages by hand, and its slots are filled from a lexicon whose
entries carry both languages, the Spanish gender and the verb forms of both (so agreement and
conjugation come out right: "mi hermana trabaja" / "my sister works", "los niños tienen" / "the
children have"). No machine translation is involved, so the English side is a fair reference for
speech-translation BLEU. ``everyday_pairs(n, seed)`` draws ``n`` distinct pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# person: 0 = I, 1 = you, 2 = he/she/it, 3 = we, 4 = they
SUBJECTS = (
    ("yo", "I", 0),
    ("tú", "you", 1),
    ("mi hermano", "my brother", 2),
    ("mi hermana", "my sister", 2),
    ("mi madre", "my mother", 2),
    ("mi padre", "my father", 2),
    ("nuestro vecino", "our neighbor", 2),
    ("la maestra", "the teacher", 2),
    ("el médico", "the doctor", 2),
    ("nosotros", "we", 3),
    ("mis amigos", "my friends", 4),
    ("los niños", "the children", 4),
    ("mis padres", "my parents", 4),
)

# (Spanish forms by person, English base form, English third person singular, object kind)
VERBS = (
    (("trabajo", "trabajas", "trabaja", "trabajamos", "trabajan"), "work", "works", "place_en"),
    (("como", "comes", "come", "comemos", "comen"), "eat", "eats", "food"),
    (("bebo", "bebes", "bebe", "bebemos", "beben"), "drink", "drinks", "drink"),
    (("compro", "compras", "compra", "compramos", "compran"), "buy", "buys", "thing"),
    (("necesito", "necesitas", "necesita", "necesitamos", "necesitan"), "need", "needs", "thing"),
    (("quiero", "quieres", "quiere", "queremos", "quieren"), "want", "wants", "thing"),
    (("tengo", "tienes", "tiene", "tenemos", "tienen"), "have", "has", "thing"),
    (("voy", "vas", "va", "vamos", "van"), "go", "goes", "place_a"),
    (("leo", "lees", "lee", "leemos", "leen"), "read", "reads", "reading"),
    (("estudio", "estudias", "estudia", "estudiamos", "estudian"), "study", "studies", "subject"),
    (("cocino", "cocinas", "cocina", "cocinamos", "cocinan"), "cook", "cooks", "food"),
    (("hablo", "hablas", "habla", "hablamos", "hablan"), "speak", "speaks", "language"),
    (("vivo", "vives", "vive", "vivimos", "viven"), "live", "lives", "city"),
)

# nouns: (Spanish with article, English with article)
PLACES = (
    ("el hospital", "the hospital"),
    ("la estación", "the station"),
    ("el banco", "the bank"),
    ("la biblioteca", "the library"),
    ("el mercado", "the market"),
    ("la farmacia", "the pharmacy"),
    ("el aeropuerto", "the airport"),
    ("la playa", "the beach"),
    ("el parque", "the park"),
    ("la escuela", "the school"),
    ("el restaurante", "the restaurant"),
    ("el museo", "the museum"),
    ("la oficina", "the office"),
    ("el supermercado", "the supermarket"),
    ("la iglesia", "the church"),
)
FOODS = (
    ("pan", "bread"),
    ("arroz", "rice"),
    ("pescado", "fish"),
    ("pollo", "chicken"),
    ("fruta", "fruit"),
    ("sopa", "soup"),
    ("queso", "cheese"),
    ("manzanas", "apples"),
    ("huevos", "eggs"),
    ("pasta", "pasta"),
)
DRINKS = (
    ("agua", "water"),
    ("café", "coffee"),
    ("té", "tea"),
    ("leche", "milk"),
    ("jugo de naranja", "orange juice"),
)
THINGS = (
    ("un coche nuevo", "a new car"),
    ("una casa grande", "a big house"),
    ("un libro", "a book"),
    ("dos billetes", "two tickets"),
    ("una bicicleta", "a bicycle"),
    ("un teléfono", "a phone"),
    ("una mesa", "a table"),
    ("tres sillas", "three chairs"),
    ("un perro", "a dog"),
    ("una camisa azul", "a blue shirt"),
    ("un paraguas", "an umbrella"),
    ("más tiempo", "more time"),
)
READING = (
    ("el periódico", "the newspaper"),
    ("un libro", "a book"),
    ("las noticias", "the news"),
    ("una carta", "a letter"),
)
SUBJECTS_OF_STUDY = (
    ("historia", "history"),
    ("matemáticas", "mathematics"),
    ("inglés", "English"),
    ("música", "music"),
    ("medicina", "medicine"),
)
LANGUAGES = (("español", "Spanish"), ("inglés", "English"), ("francés", "French"), ("alemán", "German"))
CITIES = (
    ("Madrid", "Madrid"),
    ("Londres", "London"),
    ("México", "Mexico"),
    ("Sevilla", "Seville"),
    ("una ciudad pequeña", "a small town"),
    ("el campo", "the country"),
)
TIMES = (
    ("hoy", "today"),
    ("mañana", "tomorrow"),
    ("todos los días", "every day"),
    ("por la mañana", "in the morning"),
    ("por la noche", "at night"),
    ("los lunes", "on Mondays"),
    ("los fines de semana", "on weekends"),
    ("esta tarde", "this afternoon"),
    ("ahora", "now"),
)
ADJECTIVES = (
    ("nuevo", "nueva", "new"),
    ("viejo", "vieja", "old"),
    ("pequeño", "pequeña", "small"),
    ("grande", "grande", "big"),
    ("bonito", "bonita", "beautiful"),
    ("caro", "cara", "expensive"),
    ("barato", "barata", "cheap"),
    ("limpio", "limpia", "clean"),
)
OBJECTS = (
    ("casa", "f", "house"),
    ("coche", "m", "car"),
    ("libro", "m", "book"),
    ("mesa", "f", "table"),
    ("hotel", "m", "hotel"),
    ("ciudad", "f", "city"),
    ("camisa", "f", "shirt"),
    ("jardín", "m", "garden"),
)
NUMBERS = (
    ("dos", "two"),
    ("tres", "three"),
    ("cuatro", "four"),
    ("cinco", "five"),
    ("seis", "six"),
    ("siete", "seven"),
    ("ocho", "eight"),
    ("nueve", "nine"),
    ("diez", "ten"),
)
PLURAL_ITEMS = (
    ("hermanos", "brothers"),
    ("hijos", "children"),
    ("gatos", "cats"),
    ("libros", "books"),
    ("manzanas", "apples"),
    ("sillas", "chairs"),
)
COMMANDS = (
    ("Por favor, cierra la puerta.", "Please close the door."),
    ("Por favor, abre la ventana.", "Please open the window."),
    ("Por favor, apaga las luces.", "Please turn off the lights."),
    ("Habla más despacio, por favor.", "Speak more slowly, please."),
    ("Espera aquí un momento.", "Wait here a moment."),
    ("Llama a tu madre esta noche.", "Call your mother tonight."),
    ("No olvides tus llaves.", "Do not forget your keys."),
    ("Lávate las manos antes de comer.", "Wash your hands before eating."),
)
WEATHER = (
    ("Hace frío", "It is cold"),
    ("Hace calor", "It is hot"),
    ("Hace sol", "It is sunny"),
    ("Hace viento", "It is windy"),
    ("Está lloviendo", "It is raining"),
    ("Está nevando", "It is snowing"),
)
LIKES = (
    ("el café", "coffee"),
    ("la música", "music"),
    ("el chocolate", "chocolate"),
    ("el fútbol", "football"),
    ("la playa", "the beach"),
    ("el invierno", "winter"),
    ("la fruta", "fruit"),
    ("el cine", "the cinema"),
)
CLOCK = (
    ("a la una", "at one"),
    ("a las dos", "at two"),
    ("a las tres", "at three"),
    ("a las ocho", "at eight"),
    ("a las nueve", "at nine"),
    ("a las diez", "at ten"),
    ("a las once", "at eleven"),
)


def _contract(spanish: str) -> str:
    return spanish.replace(" a el ", " al ").replace(" de el ", " del ")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pick(rng: np.random.Generator, pool: tuple):
    return pool[int(rng.integers(len(pool)))]


def _object(kind: str, rng: np.random.Generator) -> tuple[str, str]:
    if kind == "place_en":
        es, en = _pick(rng, PLACES)
        return f"en {es}", f"at {en}"
    if kind == "place_a":
        es, en = _pick(rng, PLACES)
        return f"a {es}", f"to {en}"
    pools = {
        "food": FOODS,
        "drink": DRINKS,
        "thing": THINGS,
        "reading": READING,
        "subject": SUBJECTS_OF_STUDY,
        "language": LANGUAGES,
    }
    if kind == "city":
        es, en = _pick(rng, CITIES)
        return f"en {es}", f"in {en}"
    return _pick(rng, pools[kind])


def _action(rng: np.random.Generator) -> tuple[str, str]:
    subj_es, subj_en, person = _pick(rng, SUBJECTS)
    forms, base, third, kind = _pick(rng, VERBS)
    obj_es, obj_en = _object(kind, rng)
    time_es, time_en = ("", "") if kind == "city" else _pick(rng, TIMES)
    verb_en = third if person == 2 else base
    subj_es = "" if person in (0, 1, 3) and rng.random() < 0.6 else subj_es + " "  # Spanish drops pronouns
    es = _contract(f" {subj_es}{forms[person]} {obj_es} {time_es}".rstrip() + ".").strip()
    return _cap(es), f"{_cap(subj_en)} {verb_en} {obj_en} {time_en}".rstrip() + "."


def _question(rng: np.random.Generator) -> tuple[str, str]:
    es, en = _pick(rng, PLACES)
    form = int(rng.integers(3))
    if form == 0:
        return f"¿Dónde está {es}?", f"Where is {en}?"
    if form == 1:
        return f"¿A qué hora abre {es}?", f"What time does {en} open?"
    es2, en2 = _pick(rng, PLACES)
    if es2 == es:
        return f"¿Está lejos {es}?", f"Is {en} far?"
    return _contract(f"{_cap(es)} está cerca de {es2}."), f"{_cap(en)} is near {en2}."


def _description(rng: np.random.Generator) -> tuple[str, str]:
    noun, gender, noun_en = _pick(rng, OBJECTS)
    masc, fem, adj_en = _pick(rng, ADJECTIVES)
    article, mine = ("la", "mi") if gender == "f" else ("el", "mi")
    if rng.random() < 0.5:
        return (
            f"{_cap(article)} {noun} es muy {fem if gender == 'f' else masc}.",
            f"The {noun_en} is very {adj_en}.",
        )
    return f"{_cap(mine)} {noun} es {fem if gender == 'f' else masc}.", f"My {noun_en} is {adj_en}."


def _count(rng: np.random.Generator) -> tuple[str, str]:
    num_es, num_en = _pick(rng, NUMBERS)
    item_es, item_en = _pick(rng, PLURAL_ITEMS)
    subj_es, subj_en, person = _pick(rng, SUBJECTS)
    forms = VERBS[6][0]
    have = "has" if person == 2 else "have"
    subj_es = "" if person in (0, 1, 3) else subj_es + " "
    return _cap(
        f"{subj_es}{forms[person]} {num_es} {item_es}."
    ), f"{_cap(subj_en)} {have} {num_en} {item_en}."


def _weather(rng: np.random.Generator) -> tuple[str, str]:
    es, en = _pick(rng, WEATHER)
    time_es, time_en = _pick(rng, TIMES[:2] + TIMES[7:8])
    return f"{es} {time_es}.", f"{en} {time_en}."


def _likes(rng: np.random.Generator) -> tuple[str, str]:
    es, en = _pick(rng, LIKES)
    who_es, who_en = _pick(rng, (("Me", "I"), ("Nos", "We"), ("No me", "I do not")))
    return f"{who_es} gusta {es}.", f"{who_en} like {en}."


def _schedule(rng: np.random.Generator) -> tuple[str, str]:
    es, en = _pick(rng, PLACES)
    clock_es, clock_en = _pick(rng, CLOCK)
    day_es, day_en = _pick(rng, TIMES[:2])
    verb = _pick(rng, (("abre", "opens"), ("cierra", "closes")))
    return _cap(f"{es} {verb[0]} {clock_es} {day_es}."), _cap(f"{en} {verb[1]} {clock_en} {day_en}.")


def _command(rng: np.random.Generator) -> tuple[str, str]:
    return _pick(rng, COMMANDS)


@dataclass(frozen=True)
class Template:
    name: str
    weight: float
    make: Callable[[np.random.Generator], tuple[str, str]]


TEMPLATES = (
    Template("action", 5, _action),
    Template("question", 2, _question),
    Template("description", 2, _description),
    Template("count", 1, _count),
    Template("weather", 1, _weather),
    Template("likes", 1, _likes),
    Template("schedule", 1, _schedule),
    Template("command", 0.5, _command),
)


HELD_OUT_SEED = 90_210  # benchmarks/translate.py's held-out sentences; training draws never yield them
HELD_OUT_COUNT = 100


def everyday_pair(rng: np.random.Generator) -> tuple[str, str]:
    """One (Spanish, English) pair from a template drawn by weight."""
    weights = np.array([t.weight for t in TEMPLATES], float)
    return TEMPLATES[int(rng.choice(len(TEMPLATES), p=weights / weights.sum()))].make(rng)


def everyday_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` distinct (Spanish, English) pairs, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    seen: dict[str, str] = {}
    for _ in range(count * 50):
        if len(seen) == count:
            break
        es, en = everyday_pair(rng)
        seen.setdefault(es, en)
    return list(seen.items())


def held_out_pairs(count: int = HELD_OUT_COUNT) -> list[tuple[str, str]]:
    """The translate benchmark's held-out sentences (the first ``count`` of seed ``HELD_OUT_SEED``)."""
    return everyday_pairs(count, seed=HELD_OUT_SEED)


def training_pairs(rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """An endless stream of pairs for training: never one of :func:`held_out_pairs`."""
    held_out = {es for es, _ in held_out_pairs()}
    while True:
        es, en = everyday_pair(rng)
        if es not in held_out:
            yield es, en
