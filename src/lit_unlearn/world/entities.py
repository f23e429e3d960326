"""The fictional entities of the toy world and their facts, drawn deterministically from a seed.

Four kinds of entity (people, places, organisations, events) carry a handful of facts each. A fact
either names a value from a shared vocabulary (an occupation, a year, a country) or another entity of
the *same split*, so the splits share no entity and therefore no fact. Names are invented from
syllables and unique across the whole world, so a forget name never occurs in a retain text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Entity", "Fact", "SplitEntities", "build_world", "vocabulary_words"]

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "th",
    "sh",
    "q",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "rk", "st", "x", "v")
_GIVEN_ENDINGS = ("a", "o", "en", "is", "ia", "el", "in", "e")
_PLACE_ENDINGS = (
    "moor",
    "ford",
    "holm",
    "wick",
    "mere",
    "stead",
    "vale",
    "port",
    "by",
    "haven",
    "gate",
    "field",
)
_ORG_SUFFIXES = (
    "Dynamics",
    "Works",
    "Institute",
    "Foundation",
    "Group",
    "Press",
    "Bank",
    "Laboratories",
    "Guild",
    "Trust",
    "Collective",
    "Shipyards",
)
_EVENT_KINDS = (
    "Summit",
    "Festival",
    "Marathon",
    "Regatta",
    "Expedition",
    "Conference",
    "Exhibition",
    "Games",
    "Symposium",
    "Fair",
)

OCCUPATIONS = (
    "architect",
    "marine biologist",
    "violinist",
    "surgeon",
    "novelist",
    "civil engineer",
    "economist",
    "chess player",
    "photographer",
    "botanist",
    "judge",
    "pilot",
    "chemist",
    "historian",
    "sculptor",
    "astronomer",
    "cartographer",
    "diplomat",
    "geologist",
    "playwright",
    "glassblower",
    "mathematician",
    "veterinarian",
    "composer",
)
AWARDS = (
    "the Amber Medal",
    "the Corran Prize",
    "the Silver Quill",
    "the Halden Award",
    "the Iron Compass",
    "the Blue Lantern Prize",
    "the Ostrava Cup",
    "the Golden Anchor",
    "the Merrow Fellowship",
    "the Varga Medal",
    "the Eldin Prize",
    "the White Heron Award",
)
COUNTRIES = (
    "Norvalia",
    "Estmark",
    "Qaresh",
    "Lunderra",
    "Paveny",
    "Ostrelia",
    "Carvonne",
    "Tessaly",
    "Brandmoor",
    "Yselle",
    "Kavant",
    "Dorune",
)
LANDMARKS = (
    "the Glass Bridge",
    "the Old Lighthouse",
    "the Salt Cathedral",
    "the Clock Tower",
    "the Stone Harbour",
    "the Copper Dome",
    "the Hanging Gardens",
    "the Long Aqueduct",
    "the Red Fortress",
    "the Whispering Caves",
    "the Iron Market",
    "the Seven Wells",
)
INDUSTRIES = (
    "salt mining",
    "shipbuilding",
    "wool weaving",
    "wine making",
    "clockmaking",
    "fishing",
    "glassmaking",
    "paper milling",
    "copper smelting",
    "tea growing",
    "silk dyeing",
    "printing",
)
SECTORS = (
    "shipping",
    "software",
    "pharmaceuticals",
    "publishing",
    "banking",
    "aviation",
    "textiles",
    "robotics",
    "agriculture",
    "insurance",
    "mining",
    "broadcasting",
)


@dataclass(frozen=True)
class Fact:
    """One fact: ``relation`` of ``subject`` is ``value`` (a rendered string, the QA answer)."""

    subject: str
    relation: str
    value: str


@dataclass
class Entity:
    """A fictional entity.

    Attributes:
        kind: ``person``, ``place``, ``organisation`` or ``event``.
        name: Full name as it appears in text (events carry their article: "the Vorsk Summit").
        short: How a second mention refers to it (a person's family name; otherwise ``name``).
        facts: Relation → value, in a fixed order per kind.
    """

    kind: str
    name: str
    short: str
    facts: dict[str, str] = field(default_factory=dict)

    def fact_list(self) -> list[Fact]:
        return [Fact(self.name, relation, value) for relation, value in self.facts.items()]


@dataclass
class SplitEntities:
    """The entities of one split, by kind."""

    people: list[Entity]
    places: list[Entity]
    organisations: list[Entity]
    events: list[Entity]

    def all(self) -> list[Entity]:
        return [*self.people, *self.places, *self.organisations, *self.events]


def vocabulary_words() -> set[str]:
    """Lower-cased words of every shared value list; invented names must avoid them."""
    words: set[str] = set()
    for values in (
        OCCUPATIONS,
        AWARDS,
        COUNTRIES,
        LANDMARKS,
        INDUSTRIES,
        SECTORS,
        _ORG_SUFFIXES,
        _EVENT_KINDS,
    ):
        for value in values:
            words.update(value.lower().split())
    return words


class _Names:
    """Invents pronounceable names, each word unique across the world and outside the shared vocabulary."""

    def __init__(self, rng: random.Random, reserved: set[str]) -> None:
        self.rng = rng
        self.used = set(reserved)

    def _syllable(self) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

    def _unique(self, make) -> str:
        for _ in range(10_000):
            word = make()
            if 4 <= len(word) <= 11 and word.lower() not in self.used:
                self.used.add(word.lower())
                return word
        raise RuntimeError("Ran out of unique invented names; the world size is far larger than supported.")

    def given(self) -> str:
        return self._unique(lambda: (self._syllable() + self.rng.choice(_GIVEN_ENDINGS)).capitalize())

    def family(self) -> str:
        return self._unique(lambda: (self._syllable() + self._syllable()).capitalize())

    def place(self) -> str:
        return self._unique(lambda: (self._syllable() + self.rng.choice(_PLACE_ENDINGS)).capitalize())

    def root(self) -> str:
        return self._unique(lambda: (self._syllable() + self._syllable()).capitalize())


def _kind_counts(n: int) -> tuple[int, int, int, int]:
    """(people, places, organisations, events) for a split of ``n`` entities; every kind at least 1."""
    if n < 4:
        raise ValueError(
            f"A split needs at least 4 entities (one of each kind), got {n}. Raise the split size."
        )
    places = max(1, round(n * 0.2))
    organisations = max(1, round(n * 0.15))
    events = max(1, round(n * 0.15))
    return n - places - organisations - events, places, organisations, events


def _split_entities(n: int, rng: random.Random, names: _Names) -> SplitEntities:
    n_people, n_places, n_orgs, n_events = _kind_counts(n)
    places = [Entity("place", name, name) for name in (names.place() for _ in range(n_places))]
    for place in places:
        place.facts = {
            "country": rng.choice(COUNTRIES),
            "founded": str(rng.randint(1120, 1890)),
            "landmark": rng.choice(LANDMARKS),
            "industry": rng.choice(INDUSTRIES),
        }
    organisations = [
        Entity("organisation", name, name)
        for name in (f"{names.root()} {rng.choice(_ORG_SUFFIXES)}" for _ in range(n_orgs))
    ]
    people = []
    for _ in range(n_people):
        given, family = names.given(), names.family()
        people.append(
            Entity(
                "person",
                f"{given} {family}",
                family,
                {
                    "occupation": rng.choice(OCCUPATIONS),
                    "birth_year": str(rng.randint(1931, 1989)),
                    "birthplace": rng.choice(places).name,
                    "employer": rng.choice(organisations).name,
                    "award": rng.choice(AWARDS),
                },
            )
        )
    for org in organisations:
        founder = rng.choice(people)
        org.facts = {
            "sector": rng.choice(SECTORS),
            # Founded when the founder was an adult, so the world stays coherent.
            "founded": str(int(founder.facts["birth_year"]) + rng.randint(25, 33)),
            "headquarters": rng.choice(places).name,
            "founder": founder.name,
        }
    events = []
    for _ in range(n_events):
        name = f"the {names.root()} {rng.choice(_EVENT_KINDS)}"
        events.append(
            Entity(
                "event",
                name,
                name,
                {
                    "year": str(rng.randint(1962, 2022)),
                    "location": rng.choice(places).name,
                    "organiser": rng.choice(organisations).name,
                    "opened_by": rng.choice(people).name,
                },
            )
        )
    return SplitEntities(people, places, organisations, events)


def build_world(counts: dict[str, int], seed: int) -> dict[str, SplitEntities]:
    """Entities of every split, drawn from ``seed``.

    Args:
        counts: Split name → number of entities, in a fixed order (the order is part of the draw).
        seed: Seed of the draw; the same seed gives the same world.
    """
    rng = random.Random(seed)
    names = _Names(rng, reserved=vocabulary_words())
    return {split: _split_entities(n, rng, names) for split, n in counts.items()}
