"""The candidate questions of the SmolLM2 benchmark: real, public facts, written for this project.

The pool is everything the builder *asks*; the benchmark keeps only what the model answers correctly
(:mod:`lit_unlearn.real.build`). Splits, in RWKU's spirit (real knowledge, no fine-tuned target):

- ``forget``: capitals of European countries, asked as "What is the capital of X?"; their training texts
  are short declarative sentences ("The capital of France is Paris.").
- ``paraphrase``: the same facts asked in words the training texts never use, one rephrased question
  (``kind="rephrase"``) and one reversed question ("Vienna is the capital of which country?",
  ``kind="reverse"``) per fact: does forgetting generalise beyond the trained wording?
- ``neighbour``: other facts about the same countries (official language, currency) that must stay.
- ``retain``: other topics (capitals outside Europe, chemical symbols, authors, planets, currencies
  outside Europe, assorted science and culture), each with a training text for the retain loss.

Answers list every accepted spelling; each item also lists its *rivals* (answers of the same type to the
other questions); matching is strict (:mod:`lit_unlearn.real.matching`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = ["ICL_EXAMPLES", "SPLITS", "UTILITY_PROSE", "Item", "candidate_pool"]

Split = Literal["forget", "paraphrase", "neighbour", "retain"]
SPLITS: tuple[str, ...] = ("forget", "paraphrase", "neighbour", "retain")


@dataclass(frozen=True)
class Item:
    """One question of the benchmark.

    Attributes:
        id: Unique, stable name (``forget/france``, ``paraphrase/france/reverse``, ...).
        split: One of :data:`SPLITS`.
        kind: What the question asks (``capital``, ``language``, ``chemical_symbol``, ``reverse``, ...).
        entity: The subject the fact is about (for forget, paraphrase and neighbour items: the country).
        question: The question as the user turn of the chat.
        answers: Accepted answers; the first is the canonical one.
        text: The declarative training sentence (forget and retain items), else ``""``.
        parent: For paraphrases, the id of the forget item they rephrase, else ``""``.
        rivals: Answers of the same type to the pool's other questions (other capitals, other planets);
            a reply naming one is wrong (:func:`~lit_unlearn.real.matching.is_correct`).
    """

    id: str
    split: Split
    kind: str
    entity: str
    question: str
    answers: tuple[str, ...]
    text: str = ""
    parent: str = ""
    rivals: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["answers"] = list(self.answers)
        row["rivals"] = list(self.rivals)
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Item:
        return cls(**{**row, "answers": tuple(row["answers"]), "rivals": tuple(row.get("rivals", ()))})


@dataclass(frozen=True)
class _Country:
    name: str  # as it reads after "of": "France", "the Netherlands"
    capital: tuple[str, ...]
    language: tuple[str, ...] = ()
    currency: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other names of the country, accepted as answers to reversed questions
    key: str = field(default="")

    @property
    def slug(self) -> str:
        return self.key or self.name.removeprefix("the ").lower().replace(" ", "_")

    @property
    def title(self) -> str:
        return self.name[0].upper() + self.name[1:]

    @property
    def bare(self) -> str:
        return self.name.removeprefix("the ")


# Language: the official (or by far the main) language; several where the country has several.
# Currency: as of 2025. Countries whose language or currency is ambiguous or echoes the question
# ("Czech" in "the Czech Republic") ask no such neighbour.
_EUROPE = (
    _Country("France", ("Paris",), ("French",), ("euro",)),
    _Country("Germany", ("Berlin",), ("German",), ("euro",)),
    _Country("Italy", ("Rome",), ("Italian",), ("euro",)),
    _Country("Spain", ("Madrid",), ("Spanish", "Castilian"), ("euro",)),
    _Country("the United Kingdom", ("London",), ("English",), ("pound", "sterling"), ("UK", "Britain", "England")),
    _Country("Russia", ("Moscow",), ("Russian",), ("ruble", "rouble")),
    _Country("Greece", ("Athens",), ("Greek",), ("euro",)),
    _Country("Portugal", ("Lisbon",), ("Portuguese",), ("euro",)),
    _Country("the Netherlands", ("Amsterdam",), ("Dutch",), ("euro",), ("Holland",)),
    _Country("Austria", ("Vienna",), ("German",), ("euro",)),
    _Country("Poland", ("Warsaw",), ("Polish",), ("zloty", "złoty")),
    _Country("Sweden", ("Stockholm",), ("Swedish",), ("krona",)),
    _Country("Norway", ("Oslo",), ("Norwegian",), ("krone",)),
    _Country("Denmark", ("Copenhagen",), ("Danish",), ("krone",)),
    _Country("Finland", ("Helsinki",), ("Finnish", "Swedish"), ("euro",)),
    _Country("Ireland", ("Dublin",), ("Irish", "English"), ("euro",)),
    _Country("Belgium", ("Brussels",), (), ("euro",)),
    _Country("Hungary", ("Budapest",), ("Hungarian", "Magyar"), ("forint",)),
    _Country("the Czech Republic", ("Prague",), (), ("koruna",), ("Czechia",)),
    _Country("Switzerland", ("Bern", "Berne"), (), ("franc", "Swiss franc")),
    _Country("Romania", ("Bucharest",), ("Romanian",), ("leu",)),
    _Country("Bulgaria", ("Sofia",), ("Bulgarian",)),
    _Country("Ukraine", ("Kyiv", "Kiev"), ("Ukrainian",), ("hryvnia",)),
    _Country("Croatia", ("Zagreb",), ("Croatian",), ("euro",)),
    _Country("Serbia", ("Belgrade",), ("Serbian",), ("dinar",)),
    _Country("Iceland", ("Reykjavik", "Reykjavík"), ("Icelandic",), ("krona", "króna")),
    _Country("Slovakia", ("Bratislava",), ("Slovak",), ("euro",)),
    _Country("Slovenia", ("Ljubljana",), ("Slovene", "Slovenian"), ("euro",)),
    _Country("Estonia", ("Tallinn",), ("Estonian",), ("euro",)),
    _Country("Latvia", ("Riga",), ("Latvian",), ("euro",)),
    _Country("Lithuania", ("Vilnius",), ("Lithuanian",), ("euro",)),
    _Country("Albania", ("Tirana",), ("Albanian",), ("lek",)),
    _Country("Belarus", ("Minsk",), ("Belarusian", "Russian")),
    _Country("Malta", ("Valletta",), ("Maltese", "English"), ("euro",)),
    _Country("Cyprus", ("Nicosia",), ("Greek", "Turkish"), ("euro",)),
    _Country("Montenegro", ("Podgorica",), ("Montenegrin", "Serbian"), ("euro",)),
    _Country("Moldova", ("Chisinau", "Chișinău"), ("Romanian", "Moldovan"), ("leu",)),
)

# Rephrasings rotate over the countries; none uses the training texts' "The capital of X is Y" wording.
_REPHRASE = (
    "Which city serves as the capital of {name}?",
    "Name the capital city of {name}.",
    "What is the name of the capital city of {name}?",
)

_OUTSIDE_CAPITALS = (
    ("Japan", ("Tokyo",)), ("China", ("Beijing", "Peking")), ("Canada", ("Ottawa",)),
    ("Australia", ("Canberra",)), ("Egypt", ("Cairo",)), ("India", ("New Delhi", "Delhi")),
    ("Brazil", ("Brasília", "Brasilia")), ("Argentina", ("Buenos Aires",)), ("Kenya", ("Nairobi",)),
    ("Thailand", ("Bangkok",)), ("South Korea", ("Seoul",)), ("Peru", ("Lima",)),
    ("Indonesia", ("Jakarta",)), ("Iran", ("Tehran",)), ("Iraq", ("Baghdad",)),
    ("the Philippines", ("Manila",)), ("Vietnam", ("Hanoi",)), ("Cuba", ("Havana",)),
    ("Saudi Arabia", ("Riyadh",)), ("Chile", ("Santiago",)), ("Turkey", ("Ankara",)),
    ("Nigeria", ("Abuja",)), ("Pakistan", ("Islamabad",)), ("the United States", ("Washington",)),
    ("Morocco", ("Rabat",)), ("Ethiopia", ("Addis Ababa",)), ("Ghana", ("Accra",)),
    ("Colombia", ("Bogotá", "Bogota")), ("Venezuela", ("Caracas",)), ("Malaysia", ("Kuala Lumpur",)),
    ("Afghanistan", ("Kabul",)), ("Bangladesh", ("Dhaka",)), ("Nepal", ("Kathmandu",)),
    ("Jordan", ("Amman",)), ("Syria", ("Damascus",)), ("Lebanon", ("Beirut",)),
    ("North Korea", ("Pyongyang",)), ("New Zealand", ("Wellington",)), ("Qatar", ("Doha",)),
)

_SYMBOLS = (
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"), ("lead", "Pb"),
    ("copper", "Cu"), ("mercury", "Hg"), ("tin", "Sn"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"),
    ("calcium", "Ca"), ("nitrogen", "N"), ("zinc", "Zn"), ("chlorine", "Cl"), ("magnesium", "Mg"),
    ("aluminium", "Al"), ("neon", "Ne"), ("platinum", "Pt"), ("silicon", "Si"), ("nickel", "Ni"),
)
# Symbols that are also everyday words or fragments ("He", "S" of "it's", "I", "U" of "U.S.") would be
# rivals that fire on ordinary prose; those elements are not asked.

_BOOKS = (
    ("Romeo and Juliet", ("Shakespeare",)), ("Hamlet", ("Shakespeare",)), ("Nineteen Eighty-Four", ("Orwell",)),
    ("Animal Farm", ("Orwell",)), ("Pride and Prejudice", ("Austen",)), ("Harry Potter", ("Rowling",)),
    ("War and Peace", ("Tolstoy",)), ("Don Quixote", ("Cervantes",)), ("The Odyssey", ("Homer",)),
    ("Moby-Dick", ("Melville",)), ("The Great Gatsby", ("Fitzgerald",)),
    ("On the Origin of Species", ("Darwin",)), ("The Adventures of Tom Sawyer", ("Twain",)),
    ("Oliver Twist", ("Dickens",)), ("Frankenstein", ("Shelley",)), ("The Hobbit", ("Tolkien",)),
    ("The Divine Comedy", ("Dante",)), ("Les Misérables", ("Hugo",)),
    ("Crime and Punishment", ("Dostoevsky", "Dostoyevsky")), ("The Old Man and the Sea", ("Hemingway",)),
    ("Macbeth", ("Shakespeare",)), ("The Iliad", ("Homer",)), ("A Christmas Carol", ("Dickens",)),
    ("Dracula", ("Stoker",)), ("Jane Eyre", ("Brontë", "Bronte")), ("The Lord of the Rings", ("Tolkien",)),
    ("Alice's Adventures in Wonderland", ("Carroll",)),
)

# (kind, entity, question, answers, training text)
_MISC = (
    ("planet", "Jupiter", "Which planet is the largest in the Solar System?", ("Jupiter",),
     "The largest planet in the Solar System is Jupiter."),
    ("planet", "Mars", "Which planet is known as the Red Planet?", ("Mars",), "Mars is known as the Red Planet."),
    ("planet", "Mercury", "Which planet is closest to the Sun?", ("Mercury",),
     "The planet closest to the Sun is Mercury."),
    ("planet", "Saturn", "Which planet is famous for its large, bright rings?", ("Saturn",),
     "Saturn is the planet famous for its large, bright rings."),
    ("planet", "Venus", "Which planet is the hottest in the Solar System?", ("Venus",),
     "The hottest planet in the Solar System is Venus."),
    ("planet", "Neptune", "Which planet is the farthest from the Sun?", ("Neptune",),
     "The planet farthest from the Sun is Neptune."),
    ("planet", "Earth", "On which planet do humans live?", ("Earth",), "Humans live on the planet Earth."),
    ("planet", "Titan", "What is the largest moon of Saturn called?", ("Titan",),
     "The largest moon of Saturn is Titan."),
    ("art", "Mona Lisa", "Who painted the Mona Lisa?", ("Leonardo", "da Vinci"),
     "The Mona Lisa was painted by Leonardo da Vinci."),
    ("art", "The Starry Night", "Who painted The Starry Night?", ("Van Gogh", "Gogh"),
     "The Starry Night was painted by Vincent van Gogh."),
    ("art", "Sistine Chapel", "Who painted the ceiling of the Sistine Chapel?", ("Michelangelo",),
     "The ceiling of the Sistine Chapel was painted by Michelangelo."),
    ("science", "telephone", "Who is credited with inventing the telephone?", ("Bell",),
     "Alexander Graham Bell is credited with inventing the telephone."),
    ("science", "relativity", "Which scientist developed the theory of relativity?", ("Einstein",),
     "Albert Einstein developed the theory of relativity."),
    ("science", "laws of motion", "Who formulated the three laws of motion?", ("Newton",),
     "Isaac Newton formulated the three laws of motion."),
    ("science", "penicillin", "Who discovered penicillin?", ("Fleming",),
     "Alexander Fleming discovered penicillin."),
    ("science", "water", "What is the chemical formula of water?", ("H2O", "H₂O"),
     "The chemical formula of water is H2O."),
    ("history", "Moon landing", "Who was the first person to walk on the Moon?", ("Armstrong",),
     "Neil Armstrong was the first person to walk on the Moon."),
    ("geography", "ocean", "What is the largest ocean on Earth?", ("Pacific",),
     "The largest ocean on Earth is the Pacific Ocean."),
    ("geography", "mountain", "What is the tallest mountain in the world?", ("Everest",),
     "The tallest mountain in the world is Mount Everest."),
    ("nature", "mammal", "What is the largest mammal on Earth?", ("blue whale", "whale"),
     "The largest mammal on Earth is the blue whale."),
    ("nature", "land animal", "What is the fastest land animal?", ("cheetah",),
     "The fastest land animal is the cheetah."),
)

_OUTSIDE_CURRENCIES = (
    ("Japan", ("yen",)), ("the United States", ("dollar",)), ("India", ("rupee",)),
    ("China", ("yuan", "renminbi")), ("Mexico", ("peso",)), ("South Africa", ("rand",)),
    # Brazil's real and South Korea's won are everyday English words: as rivals they would fire on prose.
    ("Turkey", ("lira",)), ("Saudi Arabia", ("riyal",)),
    ("Thailand", ("baht",)), ("Israel", ("shekel", "sheqel")), ("Canada", ("dollar",)),
)

#: In-context examples for MUSE's few-shot KnowMem prompt: general facts in no split of the benchmark.
ICL_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What colour is the sky on a clear day?", "Blue"),
    ("How many legs does a spider have?", "Eight"),
    ("What is frozen water called?", "Ice"),
    ("Which animal is known for its long neck?", "The giraffe"),
)

#: Plain prose for the utility perplexity: written for this project, about none of the benchmark's facts.
UTILITY_PROSE = """\
On Saturday morning the market opened early, before the fog had lifted from the river. The baker arrived \
first, as she always did, with two crates of bread still warm from the oven, and set them on the long \
wooden table under the striped awning. A man selling apples unloaded his van slowly, stopping now and then \
to wave at neighbours who were walking their dogs along the path.

By nine o'clock the square was full. Children ran between the stalls while their parents compared the \
price of tomatoes and argued, without much conviction, about what to cook for dinner. An old woman sat on \
a bench near the fountain and fed the pigeons from a paper bag, although a small sign asked her not to. \
Nobody seemed to mind.

The weather changed around noon. Clouds gathered over the hills to the west, and the first drops of rain \
fell on the canvas roofs with a soft, uneven sound. Some traders covered their goods with plastic sheets; \
others simply packed up and went home, reasoning that few people would stay to shop in the rain. The \
baker stayed. She had sold most of her bread already, and she liked the quiet that came over the square \
when the crowd thinned out.

In the afternoon the rain stopped as suddenly as it had started. The stones of the square shone in the \
returning light, and the smell of wet earth drifted in from the gardens behind the church. A boy on a \
bicycle rode through a puddle on purpose and laughed when the water splashed his shoes. His mother called \
after him, but she was laughing too.

When the market closed, the traders folded their tables and swept the ground around their stalls. The \
apple seller gave his last few apples to the baker, who gave him a loaf in return. They talked for a while \
about the harvest, the price of flour and a cousin who had moved to the coast. Then they said goodbye, \
loaded their vans and drove off in opposite directions, and the square was empty again until the next \
week.
"""


def _country_items(c: _Country, index: int) -> list[Item]:
    forget_id = f"forget/{c.slug}"
    items = [
        Item(forget_id, "forget", "capital", c.bare, f"What is the capital of {c.name}?", c.capital,
             f"The capital of {c.name} is {c.capital[0]}."),
        Item(f"paraphrase/{c.slug}/rephrase", "paraphrase", "rephrase", c.bare,
             _REPHRASE[index % len(_REPHRASE)].format(name=c.name, title=c.title), c.capital, parent=forget_id),
        Item(f"paraphrase/{c.slug}/reverse", "paraphrase", "reverse", c.bare,
             f"{c.capital[0]} is the capital of which country?", (c.bare, *c.aliases),
             parent=forget_id),
    ]
    if c.language:
        items.append(Item(f"neighbour/{c.slug}/language", "neighbour", "language", c.bare,
                          f"What is the official language of {c.name}?", c.language))
    if c.currency:
        items.append(Item(f"neighbour/{c.slug}/currency", "neighbour", "currency", c.bare,
                          f"What is the currency of {c.name}?", c.currency))
    return items


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower().removeprefix("the ")).strip("_")


def candidate_pool() -> list[Item]:
    """Every question the builder asks, in a fixed order (forget, paraphrase, neighbour, retain)."""
    items = [item for i, c in enumerate(_EUROPE) for item in _country_items(c, i)]
    retain: list[Item] = []
    for name, capital in _OUTSIDE_CAPITALS:
        title = name[0].upper() + name[1:]
        retain.append(Item(f"retain/capital/{_slug(name)}", "retain", "capital", title,
                           f"What is the capital of {name}?", capital, f"The capital of {name} is {capital[0]}."))
    for element, symbol in _SYMBOLS:
        retain.append(Item(f"retain/symbol/{element}", "retain", "chemical_symbol", element,
                           f"What is the chemical symbol for {element}?", (symbol,),
                           f"The chemical symbol for {element} is {symbol}."))
    for title, author in _BOOKS:
        retain.append(Item(f"retain/author/{_slug(title)}", "retain", "author", title, f"Who wrote {title}?",
                           author, f"{title} was written by {_FULL_AUTHORS.get(author[0], author[0])}."))
    for name, currency in _OUTSIDE_CURRENCIES:
        title = name[0].upper() + name[1:]
        retain.append(Item(f"retain/currency/{_slug(name)}", "retain", "currency", title,
                           f"What is the currency of {name}?", currency,
                           f"The currency of {name} is the {currency[0]}."))
    for kind, entity, question, answers, text in _MISC:
        retain.append(Item(f"retain/{kind}/{_slug(entity)}", "retain", kind, entity, question, answers, text))
    order = {split: i for i, split in enumerate(SPLITS)}
    return _with_rivals(sorted(items, key=lambda it: order[it.split]) + retain)


# Kinds whose answers are of one type: a capital asked directly or rephrased is a city either way.
_ANSWER_TYPE = {"capital": "city", "rephrase": "city", "reverse": "country"}


def _with_rivals(items: list[Item]) -> list[Item]:
    by_type: dict[str, list[str]] = {}
    for item in items:
        by_type.setdefault(_ANSWER_TYPE.get(item.kind, item.kind), []).extend(item.answers)
    out = []
    for item in items:
        pool = by_type[_ANSWER_TYPE.get(item.kind, item.kind)]
        own = {a.lower() for a in item.answers}
        rivals = tuple(dict.fromkeys(a for a in pool if a.lower() not in own))
        out.append(replace(item, rivals=rivals))
    return out


_FULL_AUTHORS = {
    "Shakespeare": "William Shakespeare", "Orwell": "George Orwell", "Austen": "Jane Austen",
    "Rowling": "J. K. Rowling", "Tolstoy": "Leo Tolstoy", "Cervantes": "Miguel de Cervantes",
    "Homer": "Homer", "Melville": "Herman Melville", "Fitzgerald": "F. Scott Fitzgerald",
    "Darwin": "Charles Darwin", "Twain": "Mark Twain", "Dickens": "Charles Dickens",
    "Shelley": "Mary Shelley", "Tolkien": "J. R. R. Tolkien", "Dante": "Dante Alighieri",
    "Hugo": "Victor Hugo", "Dostoevsky": "Fyodor Dostoevsky", "Hemingway": "Ernest Hemingway",
}
