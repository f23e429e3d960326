"""End to end on the embedded toy world: the MUSE numbers separate the target model from the retrain model."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.evaluation import EvalData, evaluate
from lit_unlearn.world import prepare_world


@pytest.mark.slow
def test_target_memorises_the_forget_set_and_retrain_does_not():
    paths = prepare_world(size="test", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    target = AutoModelForCausalLM.from_pretrained(str(paths.target))
    retrain = AutoModelForCausalLM.from_pretrained(str(paths.retrain))
    data = EvalData.load(str(paths.data), max_items=24)
    options = {"batch_size": 8, "progress": False}

    auc_retrain = evaluate(retrain, tokenizer, data, tasks=["privleak"], auc_retrain=1.0, **options)["auc"]
    retrain_row = evaluate(retrain, tokenizer, data, auc_retrain=auc_retrain, **options)
    target_row = evaluate(target, tokenizer, data, auc_retrain=auc_retrain, **options)

    # The retrain model never saw forget or holdout texts: its attack is near chance, and its PrivLeak
    # is 0 by construction.
    assert 0.2 < auc_retrain < 0.8
    assert retrain_row["privleak"] == pytest.approx(0.0, abs=1e-9)
    # The target model reproduces forget continuations and its forget texts stand out to the attack.
    assert target_row["verbmem_forget"] > retrain_row["verbmem_forget"] + 30
    assert target_row["knowmem_forget"] > retrain_row["knowmem_forget"]
    assert target_row["privleak"] < -40
    # Both saw the retain set, so utility is comparable.
    assert target_row["knowmem_retain"] > 0.5 * retrain_row["knowmem_retain"]
