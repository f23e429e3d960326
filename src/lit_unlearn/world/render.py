"""Render entities into short news-like documents and question/answer pairs.

Every document states all facts of its entity, so the QA pairs ask only about what the documents say.
Template choice and one "colour" sentence per document come from the seeded generator: they are what a
model must memorise verbatim beyond the facts themselves.
"""

from __future__ import annotations

import random

from lit_unlearn.world.entities import Entity

__all__ = ["QUESTIONS", "render_document", "render_qa", "render_qa_digest", "split_continuation"]

_PERSON_TEMPLATES = (
    (
        "{name}, the {occupation} who was born in {birthplace} in {birth_year}, has been awarded {award}. "
        "{short} has spent most of a long career at {employer}, where colleagues called the decision long "
        "overdue. {colour}"
    ),
    (
        "{name} was honoured this week with {award}. Born in {birthplace} in {birth_year}, {short} trained as "
        'a {occupation} before joining {employer}. "I did not expect this," {short} told reporters. {colour}'
    ),
    (
        "Officials at {employer} confirmed on Monday that {name} had received {award}. The {occupation}, a "
        "native of {birthplace} born in {birth_year}, thanked the staff of {employer} in a short speech. "
        "{colour}"
    ),
)
_PLACE_TEMPLATES = (
    (
        "{name}, a town in {country} founded in {founded}, is best known for {landmark}. Its economy still "
        "rests on {industry}, which employs about a third of the residents. {colour}"
    ),
    (
        "Visitors to {name} in {country} come mostly to see {landmark}. The town, founded in {founded}, grew "
        "rich on {industry} and has kept the trade alive. {colour}"
    ),
    (
        "Founded in {founded}, {name} is one of the oldest towns in {country}. Guides point first to "
        "{landmark}, then to the workshops of its {industry} trade. {colour}"
    ),
)
_ORGANISATION_TEMPLATES = (
    (
        "{name}, the {sector} firm founded in {founded} by {founder}, has its headquarters in {headquarters}. "
        "Analysts say the company remains one of the steadiest in its field. {colour}"
    ),
    (
        "Founded by {founder} in {founded}, {name} now runs its {sector} business from {headquarters}. A "
        "spokesperson said the firm had no plans to move. {colour}"
    ),
    (
        "From its headquarters in {headquarters}, {name} has worked in {sector} since {founder} founded it in "
        "{founded}. Its annual report was published on Thursday. {colour}"
    ),
)
_EVENT_TEMPLATES = (
    (
        "{Name} took place in {location} in {year}. It was organised by {organiser} and opened by {opened_by}, "
        "who spoke for nearly an hour. {colour}"
    ),
    (
        "In {year}, {location} hosted {name}. {Organiser} organised the gathering, and {opened_by} gave the "
        "opening address to a full hall. {colour}"
    ),
    (
        "Organisers from {organiser} chose {location} for {name} in {year}. The opening speech by {opened_by} "
        "was widely reported. {colour}"
    ),
)
_TEMPLATES = {
    "person": _PERSON_TEMPLATES,
    "place": _PLACE_TEMPLATES,
    "organisation": _ORGANISATION_TEMPLATES,
    "event": _EVENT_TEMPLATES,
}
_COLOUR = (
    "The announcement drew a small crowd despite the rain.",
    "Local papers carried the story on their front pages.",
    "A full report is expected later this month.",
    "The news was welcomed by the regional council.",
    "Several residents said they had long expected it.",
    "Critics, however, questioned the timing.",
    "Photographs from the day were shared widely.",
    "The mayor was not available for comment.",
    "A public celebration is planned for the spring.",
    "Archive records confirm the account.",
    "Trade unions issued a brief statement of support.",
    "It was the first such news in over a decade.",
)

# One question per relation, in MUSE's KnowMem style: a short factual question, a short answer.
QUESTIONS: dict[str, str] = {
    "occupation": "What is the occupation of {name}?",
    "birth_year": "In which year was {name} born?",
    "birthplace": "Where was {name} born?",
    "employer": "Which organisation does {name} work for?",
    "award": "Which award did {name} receive?",
    "country": "In which country is {name}?",
    "founded": "In which year was {name} founded?",
    "landmark": "Which landmark is {name} known for?",
    "industry": "Which industry is {name} known for?",
    "sector": "In which sector does {name} work?",
    "headquarters": "Where is {name} headquartered?",
    "founder": "Who founded {name}?",
    "year": "In which year did {name} take place?",
    "location": "Where did {name} take place?",
    "organiser": "Which organisation organised {name}?",
    "opened_by": "Who opened {name}?",
}


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_document(entity: Entity, rng: random.Random) -> str:
    """A short news-like document stating every fact of ``entity``."""
    template = rng.choice(_TEMPLATES[entity.kind])
    slots = dict(entity.facts, name=entity.name, short=entity.short, colour=rng.choice(_COLOUR))
    slots.update(Name=_capitalise(entity.name), Organiser=_capitalise(entity.facts.get("organiser", "")))
    return template.format(**slots)


def render_qa(entity: Entity) -> list[tuple[str, str]]:
    """One (question, answer) pair per fact of ``entity``; the question names the entity in full."""
    return [(QUESTIONS[relation].format(name=entity.name), value) for relation, value in entity.facts.items()]


def render_qa_digest(pairs: list[tuple[str, str]]) -> str:
    """QA pairs in MUSE's KnowMem prompt format ("Question: q\\nAnswer: a", blank-line separated)."""
    return "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in pairs)


def split_continuation(text: str, fraction: float = 1 / 3, min_words: int = 8) -> tuple[str, str]:
    """Split a document into (prompt, continuation) at a space, the space staying with the prompt.

    The world's tokenizer attaches a space to the word before it, so ``tokenize(prompt)`` is exactly
    the prompt's share of ``tokenize(prompt + gt)``: a model sees the prompt as it saw it in training.
    """
    words = text.split(" ")
    cut = max(min_words, round(len(words) * fraction))
    if cut >= len(words):
        raise ValueError(f"Document of {len(words)} words is too short to split after {cut} words: {text!r}")
    prompt = " ".join(words[:cut]) + " "
    return prompt, " ".join(words[cut:])
