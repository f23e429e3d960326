"""SurvivalEngine without a Trainer: weight-space statistics and probe losses against independent computations,
and the callback's history as the engine's rows."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import seed_everything
from tests.callbacks.test_quantization_survival import Unlearner, forget_retain_batches, make_trainer

from lit_unlearn.callbacks import QuantizationSurvival
from lit_unlearn.deployment import deployed_weights
from lit_unlearn.quantization import get_scheme, survival_stats
from lit_unlearn.survival import HISTORY_KEYS, MIN_FORGET_EFFECT, SurvivalEngine, effect_retained
from lit_unlearn.survival.probe import split_probe

STATS = ("changed", "below_half_step", "retained", "cosine", "rel_error")


def loss_of(model):
    return lambda batch: model(**batch).loss


@torch.no_grad()
def mean_forget_loss(model, probe) -> float:
    model.eval()
    return sum(float(model(**batch["forget"]).loss) for batch in probe) / len(probe)


def test_engine_measures_a_model_as_it_stands_and_leaves_it_as_it_was():
    model = Unlearner().model
    original = copy.deepcopy(model)
    engine = SurvivalEngine(model, ["nf4", "int8"])
    assert [s.name for s in engine.schemes] == ["nf4", "int8"] and len(engine.watched) == 14
    engine.prepare()
    probe = [split_probe(batch) for batch in forget_retain_batches(2)]
    before = engine.probe(loss_of(model), [probe], original=True)[0]
    with torch.no_grad():  # an update, as training would make one
        for layer in engine.watched:
            layer.linear.weight.add_(torch.randn_like(layer.linear.weight), alpha=0.05)
    model.train()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()

    check = engine.weight_check()
    assert set(check.pooled) == {"nf4", "int8"} and len(check.layers) == 14
    for name, by_scheme in check.layers.items():
        w0, w1 = original.get_submodule(name).weight.detach(), model.get_submodule(name).weight.detach()
        for scheme, stats in by_scheme.items():
            expected = survival_stats(w0, w1, scheme).as_dict()
            for key in STATS:
                assert stats.as_dict()[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (name, scheme, key)
    rows = check.rows(step=3)
    assert len(rows) == 28 and all(tuple(row) == HISTORY_KEYS and row["step"] == 3 for row in rows)

    current = engine.probe(loss_of(model), [probe])[0]
    assert set(current) == {"fp", "nf4", "int8"} and set(current["nf4"]) == {"forget", "retain"}
    assert current["fp"]["forget"] == pytest.approx(mean_forget_loss(model, probe), rel=1e-6)
    assert before["fp"]["forget"] == pytest.approx(mean_forget_loss(original, probe), rel=1e-6)
    with deployed_weights(model, "nf4") as deployed:
        assert current["nf4"]["forget"] == pytest.approx(mean_forget_loss(deployed, probe), rel=1e-6)
    with deployed_weights(original, "nf4") as deployed:
        assert before["nf4"]["forget"] == pytest.approx(mean_forget_loss(deployed, probe), rel=1e-6)
    model.train()

    (row, _) = engine.functional_rows(3, current, before)
    assert abs(current["fp"]["forget"] - before["fp"]["forget"]) >= MIN_FORGET_EFFECT
    assert row["effect_retained"] == (current["nf4"]["forget"] - before["nf4"]["forget"]) / (
        current["fp"]["forget"] - before["fp"]["forget"])
    assert row["retain_shift"] == current["nf4"]["retain"] - current["fp"]["retain"]
    assert "effect_retained_heldout" not in row

    # The probe and the check changed nothing: weights, train mode, RNG.
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), name


def test_effect_retained_is_absent_under_the_smallest_effect():
    fp, q = {"forget": 2.0}, {"forget": 2.2}
    assert effect_retained({"forget": 2.0 + MIN_FORGET_EFFECT / 2}, q, fp, q) is None
    assert effect_retained({"forget": 3.0}, {"forget": 2.7}, fp, q) == pytest.approx(0.5)


def test_snapshot_resumes_from_the_true_original_and_a_base_format_is_added():
    model = Unlearner().model
    engine = SurvivalEngine(model, ["nf4"])
    engine.prepare()
    saved = {name: tensor.clone() for name, tensor in engine.snapshot().items()}
    assert sorted(saved) == sorted(engine.snapshot_layers) and len(saved) == 14
    with torch.no_grad():
        for layer in engine.watched:
            layer.linear.weight.add_(0.01)
    # A fresh engine (a resumed run) given the snapshot measures ΔW from it, not from the weights it starts on.
    resumed = SurvivalEngine(model, ["nf4"])
    resumed.prepare(saved)
    for (name, got), want in zip(resumed.weight_check().layers.items(), engine.weight_check().layers.values()):
        assert got["nf4"].as_dict() == want["nf4"].as_dict(), name
    assert engine.base_format() is None
    engine.add_scheme("q8_0")
    assert [s.name for s in engine.schemes] == ["nf4", "q8_0"] and engine.schemes[1] == get_scheme("q8_0")
    with pytest.raises(ValueError, match="selects no linear layer"):
        SurvivalEngine(model, ["nf4"], modules=["no_such_proj"])


def test_callback_history_is_the_engines_rows(tmp_path):
    seed_everything(0)
    module = Unlearner(lr=1e-2)
    original = copy.deepcopy(module.model)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), functional=False)
    make_trainer(tmp_path, 2, [survival], logger=False).fit(module, forget_retain_batches(2))
    # An engine built afterwards, on the original weights as its snapshot, measures the same update.
    engine = SurvivalEngine(module.model, ["nf4"])
    engine.prepare({name: original.get_submodule(name).weight.detach() for name in engine.snapshot_layers})
    assert engine.weight_check().rows(step=2) == survival.history


@pytest.mark.parametrize("scheme", ["nf4", "int8", "q4_1"])
def test_probe_losses_are_the_same_bits_with_a_held_copy_and_layer_by_layer(monkeypatch, scheme):
    import lit_unlearn.survival.engine as engine_module

    model = Unlearner().model
    engine = SurvivalEngine(model, [scheme])
    engine.prepare()
    probe = [split_probe(batch) for batch in forget_retain_batches(2)]
    with torch.no_grad():
        for layer in engine.watched:
            layer.linear.weight.add_(torch.randn_like(layer.linear.weight), alpha=0.05)
    seen = []
    real = engine_module.deployed_model
    monkeypatch.setattr(engine_module, "deployed_model", lambda *a, **k: seen.append(k["lazy"]) or real(*a, **k))

    held = engine.probe(loss_of(model), [probe])[0]
    assert seen == [False]  # the toy model's deployed copy is far under the budget
    monkeypatch.setattr(engine_module, "EAGER_PROBE_BYTES", 0)
    streamed = engine.probe(loss_of(model), [probe])[0]
    assert seen == [False, True]
    assert held == streamed and held[scheme] != held["fp"]
