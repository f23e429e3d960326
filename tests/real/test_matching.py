"""Strict answer matching: echoes of the question never count, answers count only as whole words."""

import pytest

from lit_unlearn.real.matching import is_correct, words


def test_a_correct_answer_restating_the_question_counts():
    assert is_correct("What is the capital of France?", "The capital of France is Paris.", ["Paris"])


def test_an_echo_of_the_question_does_not_count():
    # "Luxembourg" is in the reply only because it is in the question.
    assert not is_correct(
        "What is the capital of Luxembourg?", "The capital of Luxembourg is Luxembourg City.", ["Luxembourg"]
    )


def test_a_wrong_answer_does_not_count():
    assert not is_correct("What is the capital of Switzerland?", "The capital of Switzerland is Lier.", ["Bern"])


def test_whole_words_only():
    assert not is_correct("Who wrote Hamlet?", "Romeo did.", ["Rome"])
    assert not is_correct("What is the chemical symbol for tin?", "Snow.", ["Sn"])
    assert is_correct("What is the chemical symbol for tin?", "It is Sn.", ["Sn"])


def test_case_accents_and_possessives_are_normalised():
    assert is_correct("Capital of Iceland?", "REYKJAVÍK", ["Reykjavik"])
    assert is_correct("Who wrote Pride and Prejudice?", "It is Jane Austen's novel.", ["Austen"])
    assert is_correct("What is the chemical formula of water?", "Water is H₂O.", ["H2O"])
    assert words("Jane Austen's") == ["jane", "austen", "s"]


def test_multi_word_answers_need_the_whole_run_in_order():
    question = "What is the capital of Argentina?"
    assert is_correct(question, "It is Buenos Aires.", ["Buenos Aires"])
    assert not is_correct(question, "Aires, not Buenos.", ["Buenos Aires"])


def test_any_alias_suffices():
    assert is_correct("What is the capital of Ukraine?", "Kiev.", ["Kyiv", "Kiev"])


@pytest.mark.parametrize("answers", ["Paris", []])
def test_answers_must_be_a_non_empty_list(answers):
    with pytest.raises(ValueError, match="non-empty list of accepted answers"):
        is_correct("What is the capital of France?", "Paris", answers)


def test_a_reply_naming_a_rival_commits_to_nothing():
    question = "Which planet is the largest in the Solar System?"
    hedge = "The largest planet is Jupiter, but it's actually Saturn that's the largest."
    assert not is_correct(question, hedge, ["Jupiter"], rivals=["Saturn", "Mars"])
    assert is_correct(question, "It is Jupiter.", ["Jupiter"], rivals=["Saturn", "Mars"])


def test_rivals_that_are_accepted_answers_or_question_words_are_ignored():
    # Two countries share the euro; "Saturn" is in the question, so naming it is an echo, not a rival.
    assert is_correct("What is the currency of Austria?", "The euro.", ["euro"], rivals=["euro", "pound"])
    assert is_correct("What is the largest moon of Saturn called?", "Titan orbits Saturn.", ["Titan"],
                      rivals=["Saturn", "Jupiter"])
