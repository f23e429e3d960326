"""Reference rows and AUC_retrain without a Trainer: evaluated once, then from memory or the results cache."""

from __future__ import annotations

import pytest

from lit_unlearn.evaluation import EvaluationSettings, Evaluator, ReferenceRows, check_references, references
from lit_unlearn.evaluation.cache import ResultsCache

from .muse_fixtures import build_llama

SETTINGS = {
    "precisions": ["full", "nf4"], "tasks": ["knowmem_forget", "privleak"], "max_items": 1, "batch_size": 2,
    "knowmem_max_new_tokens": 2, "progress": False,
}


def test_rows_are_evaluated_once_then_come_from_the_cache(tmp_path, muse_dir, tokenizer, monkeypatch):
    model = build_llama(len(tokenizer))
    path = tmp_path / "retrain"
    model.save_pretrained(path)
    loads = []
    load = references.load_reference
    monkeypatch.setattr(references, "load_reference", lambda *a: loads.append(a[0]) or load(*a))
    evaluator = Evaluator(EvaluationSettings.of(muse_dir, **SETTINGS))

    rows = ReferenceRows(evaluator, {"retrain": str(path)}, cache=ResultsCache(tmp_path / "cache"))
    auc = rows.resolve_auc_retrain(model, tokenizer)
    first = rows.evaluate("retrain", model, tokenizer, auc)
    assert set(first) == {"full", "nf4"} and len(loads) == 2, "AUC_retrain, then the rows"
    assert first["full"] == evaluator.evaluate(model, tokenizer, "full", auc)
    assert rows.evaluate("retrain", model, tokenizer, auc) is first and len(loads) == 2

    again = ReferenceRows(evaluator, {"retrain": str(path)}, cache=ResultsCache(tmp_path / "cache"))
    assert again.resolve_auc_retrain(model, tokenizer) == auc
    assert again.evaluate("retrain", model, tokenizer, auc) == first
    assert len(loads) == 2, "everything came from the cache"

    resumed = ReferenceRows(evaluator, {"retrain": str(path)})
    resumed.load_state_dict(rows.state_dict())
    assert resumed.resolve_auc_retrain(model, tokenizer) == auc
    assert resumed.evaluate("retrain", model, tokenizer, auc) == first and len(loads) == 2

    fixed = ReferenceRows(evaluator, {"retrain": str(path)}, auc_retrain=0.5)
    assert fixed.resolve_auc_retrain(model, tokenizer) == 0.5 and fixed.cache_key(str(path), "full", 0.5) is None


def test_references_are_checked():
    assert check_references(None) == {}
    with pytest.raises(ValueError, match="`references` entry 'retrain'"):
        check_references({"retrain": ""})
