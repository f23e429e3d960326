import math

import pytest
from rouge_score import rouge_scorer

from lit_unlearn.metrics import KNOWMEM_STOP_STRINGS, KnowMem, VerbMem, cut_at_stop_strings, rouge_l_f1

PAIRS = [
    ("the council met at the harbour on monday", "the council met in the harbour on a monday"),
    ("Seven lanterns burned.", "seven lanterns were burning in the tower"),
    ("", "an answer nobody gave"),
    ("running runners ran", "run runner runs"),
]


@pytest.mark.parametrize("stem", [False, True])
def test_rouge_l_matches_rouge_score(stem):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    for prediction, target in PAIRS:
        assert (
            rouge_l_f1(prediction, target, use_stemmer=stem)
            == scorer.score(target, prediction)["rougeL"].fmeasure
        )


@pytest.mark.parametrize("convention, stem", [("muse", False), ("open-unlearning", True)])
def test_verbmem_is_mean_f1_times_100_over_updates(convention, stem):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    metric = VerbMem(convention)
    metric.update([p for p, _ in PAIRS[:2]], [t for _, t in PAIRS[:2]])
    metric.update([p for p, _ in PAIRS[2:]], [t for _, t in PAIRS[2:]])
    expected = 100 * sum(scorer.score(t, p)["rougeL"].fmeasure for p, t in PAIRS) / len(PAIRS)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)


def test_stemming_is_what_separates_the_conventions():
    muse, ou = VerbMem("muse"), VerbMem("open-unlearning")
    for metric in (muse, ou):
        metric.update(["running runners"], ["run runner"])
    assert muse.compute().item() == 0.0
    assert ou.compute().item() == 100.0


def test_empty_metric_is_nan():
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(VerbMem().compute().item())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Paris", "Paris"),
        ("Paris\n\nQuestion: next?", "Paris"),
        ("Paris\nQuestion: next?", "Paris"),
        ("Paris Question: next?", "Paris "),
        ("Rome, then\n\nmore", "Rome, then"),
        ("Question: at once", ""),
        ("a\nQuestion\n\n", "a"),
    ],
)
def test_stop_string_cutting(text, expected):
    assert KNOWMEM_STOP_STRINGS == ("\n\n", "\nQuestion", "Question:")
    assert cut_at_stop_strings(text) == expected


def test_knowmem_scores_the_cut_answer():
    metric = KnowMem()
    metric.update(["Paris\n\nQuestion: What is the capital of Italy?\nAnswer: Rome"], ["Paris"])
    metric.update(["the harbour council\nQuestion: who?"], ["harbour council"])
    expected = 100 * (1.0 + rouge_l_f1("the harbour council", "harbour council")) / 2
    assert metric.compute().item() == pytest.approx(expected)


def test_rouge_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="`predictions` has 2 items but `targets` has 1"):
        VerbMem().update(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of strings"):
        KnowMem().update("a", "a")
    with pytest.raises(ValueError, match="`convention`='tofu'.*'muse', 'open-unlearning'"):
        VerbMem("tofu")
