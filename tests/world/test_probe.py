"""The recall probe: ROUGE-L by hand, argument checks."""

from __future__ import annotations

import pytest

from lit_unlearn.world.probe import knowledge_report, rouge_l_f1


def test_rouge_l_f1_by_hand():
    assert rouge_l_f1("the Iron Compass", "the Iron Compass") == 1.0
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7.
    assert rouge_l_f1("a b c d", "a c e") == pytest.approx(4 / 7)
    assert rouge_l_f1("Brenmoor.", "brenmoor") == 1.0
    assert rouge_l_f1("x", "y") == 0.0
    assert rouge_l_f1("", "") == 1.0 and rouge_l_f1("", "y") == 0.0


def test_unknown_precision_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"`schemes`='int3x' is not supported; choose one of 'full', 'int8'"):
        knowledge_report(None, None, tmp_path, schemes=("fp32", "int3x"))
    with pytest.raises(ValueError, match="`schemes` is empty"):
        knowledge_report(None, None, tmp_path, schemes=())
