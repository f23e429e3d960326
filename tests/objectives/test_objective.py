import pytest
import torch

from lit_unlearn.objectives import (
    GDR,
    KLR,
    METHODS,
    NPO,
    GradAscent,
    Objective,
    SimNPO,
    build_objective,
    default_retain_weight,
)


def batch(b=2, t=5, v=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, v, generator=generator), torch.randint(0, v, (b, t), generator=generator)


def test_methods_are_the_documented_names():
    assert METHODS == (
        "ga",
        "ga_gdr",
        "ga_klr",
        "npo",
        "npo_gdr",
        "npo_klr",
        "simnpo",
        "simnpo_gdr",
        "simnpo_klr",
    )


@pytest.mark.parametrize(
    ("method", "forget_type", "retain_type", "retain_weight", "needs_reference"),
    [
        ("ga", GradAscent, type(None), None, False),
        ("ga_gdr", GradAscent, GDR, 100.0, False),
        ("ga_klr", GradAscent, KLR, 100.0, True),
        ("npo", NPO, type(None), None, True),
        ("npo_gdr", NPO, GDR, 0.1, True),
        ("npo_klr", NPO, KLR, 0.1, True),
        ("simnpo", SimNPO, type(None), None, False),
        ("simnpo_gdr", SimNPO, GDR, 0.1, False),
        ("simnpo_klr", SimNPO, KLR, 0.1, True),
    ],
)
def test_build_objective_composes_paper_defaults(
    method, forget_type, retain_type, retain_weight, needs_reference
):
    objective = build_objective(method)
    assert type(objective.forget) is forget_type
    assert type(objective.retain) is retain_type
    assert default_retain_weight(method) == retain_weight
    if retain_weight is not None:
        assert objective.retain_weight == retain_weight
    assert objective.needs_reference is needs_reference
    assert objective.needs_retain is (retain_weight is not None)


def test_build_objective_passes_knobs_through():
    objective = build_objective(
        "npo_klr", retain_weight=2.0, npo_beta=0.2, npo_form="logits", klr_form="logits"
    )
    assert (objective.forget.beta, objective.forget.form, objective.retain.form) == (0.2, "logits", "logits")
    assert objective.retain_weight == 2.0
    simnpo = build_objective("simnpo", simnpo_beta=0.75, simnpo_delta=2.25, simnpo_form="logits").forget
    assert (simnpo.beta, simnpo.delta, simnpo.form) == (0.75, 2.25, "logits")
    assert repr(build_objective("ga_klr")) == (
        "Objective(forget=GradAscent(), retain=KLR(form='probs'), forget_weight=1.0, retain_weight=100.0)"
    )


def test_unknown_method_lists_the_valid_ones():
    message = r"Unknown unlearning method 'npo_kl'; choose one of 'ga', 'ga_gdr'"
    with pytest.raises(ValueError, match=message) as info:
        build_objective("npo_kl")
    for method in METHODS:
        assert repr(method) in str(info.value)
    with pytest.raises(ValueError, match=r"Unknown unlearning method 'dpo'"):
        default_retain_weight("dpo")


def test_retain_weight_without_retain_term_is_rejected():
    message = r"method 'npo' has no retain term; drop `retain_weight`, or use 'npo_gdr'"
    with pytest.raises(ValueError, match=message):
        build_objective("npo", retain_weight=0.1)


def test_invalid_knobs_are_rejected_even_when_unused():
    message = r"`klr_form`='prob' is not supported; choose one of 'probs', 'logits'"
    with pytest.raises(ValueError, match=message):
        build_objective("ga", klr_form="prob")
    with pytest.raises(ValueError, match=r"`npo_beta` must be a finite number > 0, got 0"):
        build_objective("npo", npo_beta=0)


def test_loss_is_weighted_sum_and_metrics_are_prefixed():
    forget_logits, forget_labels = batch(seed=1)
    retain_logits, retain_labels = batch(b=3, t=4, seed=2)
    forget_logits.requires_grad_(True)
    objective = Objective(NPO(beta=0.1), GDR(), forget_weight=2.0, retain_weight=0.1)
    out = objective(
        forget_logits,
        forget_labels,
        retain_logits,
        retain_labels,
        forget_ref_logits=forget_logits.detach() + 0.1,
    )
    torch.testing.assert_close(out.loss, 2.0 * out.forget_loss + 0.1 * out.retain_loss)
    torch.testing.assert_close(out.retain_loss, GDR()(retain_logits, retain_labels).loss)
    assert set(out.metrics) == {
        "loss",
        "forget/loss",
        "forget/nll",
        "forget/log_ratio",
        "retain/loss",
        "retain/nll",
    }
    assert all(not value.requires_grad and value.dim() == 0 for value in out.metrics.values())
    assert out.forget_loss.requires_grad


def test_forget_only_objective_ignores_retain_batch():
    logits, labels = batch()
    out = build_objective("ga")(logits, labels)
    assert out.retain_loss is None
    torch.testing.assert_close(out.loss, GradAscent()(logits, labels).loss)
    assert set(out.metrics) == {"loss", "forget/loss", "forget/nll"}


def test_missing_forget_reference_raises():
    logits, labels = batch()
    with pytest.raises(ValueError, match=r"NPO\(beta=0.1, form='sequence'\) needs `forget_ref_logits`"):
        build_objective("npo_gdr")(logits, labels, logits, labels)


def test_missing_retain_reference_raises():
    logits, labels = batch()
    with pytest.raises(ValueError, match=r"KLR\(form='probs'\) needs `retain_ref_logits`"):
        build_objective("ga_klr")(logits, labels, logits, labels)
    # GA+KLR reads the reference on the retain batch only.
    objective = build_objective("ga_klr")
    assert not objective.needs_forget_reference and objective.needs_retain_reference
    out = objective(logits, labels, logits, labels, retain_ref_logits=logits)
    assert out.metrics["retain/kl"].item() == 0.0


def test_missing_retain_batch_raises():
    logits, labels = batch()
    message = r"GDR\(\) needs `retain_logits` and `retain_labels`, got None and None"
    with pytest.raises(ValueError, match=message):
        build_objective("simnpo_gdr")(logits, labels)


def test_objective_validates_its_parts():
    with pytest.raises(TypeError, match=r"`forget` must be a forget loss"):
        Objective(lambda logits, labels: logits)
    with pytest.raises(ValueError, match=r"`retain_weight` must be a finite number >= 0, got -1.0"):
        Objective(GradAscent(), GDR(), retain_weight=-1.0)
