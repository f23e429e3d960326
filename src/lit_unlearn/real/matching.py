"""Strict answer matching: whole words, case- and accent-insensitive, the question's own words removed.

A chat model tends to restate the question ("The capital of France is Paris."), so a loose substring test
would count an echo as knowledge: asked for the capital of Luxembourg, "The capital of Luxembourg is
Luxembourg City" contains the answer only because the question does. The rules:

1. Text is normalised: Unicode NFKD with combining marks dropped ("Reykjavík" → "reykjavik", "H₂O" →
   "h2o"), lower case, split into word tokens (``\\w+``; "Austen's" → "austen", "s").
2. Every token that occurs in the question is removed from the model's answer *and* from the accepted
   answer. An accepted answer made only of question words can never match: the item is unanswerable
   under these rules and the builder drops it.
3. The answer is correct if, for some accepted answer, its remaining tokens occur in the remaining answer
   tokens as a contiguous run (whole words: "Rome" does not match "Romeo", "Sn" does not match "Snow")
4. ... and no *rival* occurs the same way: a rival is an answer of the same type to another question
   (another capital, another planet). "Jupiter, but it's actually Saturn that's the largest" commits to
   neither planet, so it is not a correct answer.

What the rules do not catch: a negated answer ("not Paris") still counts, and so does a hedge that names
no rival.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["is_correct", "words"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised word tokens of ``text`` (NFKD, combining marks dropped, lower case, ``\\w+``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD.findall(stripped.lower())


def _contains_run(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def is_correct(question: str, response: str, answers: Sequence[str], rivals: Sequence[str] = ()) -> bool:
    """Whether ``response`` gives one of ``answers`` to ``question`` under the strict rules above.

    Args:
        question: The question as asked (its words are removed from all sides).
        response: The model's reply.
        answers: Accepted answers (aliases); any one suffices.
        rivals: Answers of the same type to other questions; naming any of them makes the reply wrong.
            A rival that is also an accepted answer (two countries sharing the euro) is ignored.

    Raises:
        ValueError: if ``answers`` is empty or a single string (a string would be read letter by letter).

    Example::

        >>> is_correct("What is the capital of France?", "The capital of France is Paris.", ["Paris"])
        True
        >>> is_correct("What is the capital of Luxembourg?", "It is Luxembourg City.", ["Luxembourg"])
        False
        >>> is_correct("Largest planet?", "Jupiter, or rather Saturn.", ["Jupiter"], rivals=["Saturn"])
        False
    """
    if isinstance(answers, str) or not answers:
        raise ValueError(
            f"`answers`={answers!r} must be a non-empty list of accepted answers, e.g. ['Paris'] "
            "(a bare string would be read as a list of letters)."
        )
    asked = set(words(question))
    said = [w for w in words(response) if w not in asked]

    def stripped(text: str) -> list[str]:
        return [w for w in words(text) if w not in asked]

    golds = [gold for gold in map(stripped, answers) if gold]
    if not any(_contains_run(said, gold) for gold in golds):
        return False
    others = [rival for rival in map(stripped, rivals) if rival and rival not in golds]
    return not any(_contains_run(said, rival) for rival in others)
