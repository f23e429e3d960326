"""ObjectiveSettings: the method and its knobs as one value, checked when made, building what build_objective builds."""

from __future__ import annotations

from dataclasses import asdict
from typing import get_args

import pytest

from lit_unlearn.objectives import METHODS, Method, ObjectiveSettings, build_objective, objective_settings


def test_the_method_type_names_every_method():
    assert get_args(Method) == METHODS


def test_defaults_are_build_objectives():
    settings = ObjectiveSettings("npo_gdr")
    assert asdict(settings) == {
        "method": "npo_gdr", "forget_weight": 1.0, "retain_weight": None, "npo_beta": 0.1, "npo_form": "sequence",
        "simnpo_beta": 2.5, "simnpo_delta": 0.0, "klr_form": "probs",
    }
    for method in METHODS:
        assert repr(ObjectiveSettings(method).build()) == repr(build_objective(method)), method


def test_knobs_reach_the_objective():
    objective = ObjectiveSettings("npo_klr", retain_weight=2.0, npo_beta=0.2, npo_form="logits", klr_form="logits").build()
    assert (objective.forget.beta, objective.forget.form, objective.retain.form) == (0.2, "logits", "logits")
    assert objective.retain_weight == 2.0
    simnpo = ObjectiveSettings("simnpo_gdr", forget_weight=0.5, simnpo_beta=0.75, simnpo_delta=2.25).build()
    assert (simnpo.forget.beta, simnpo.forget.delta, simnpo.forget_weight) == (0.75, 2.25, 0.5)
    assert simnpo.retain_weight == 0.1, "an unset retain weight is the paper's for the method"


def test_valid_settings_do_not_raise():
    ObjectiveSettings("ga_gdr", forget_weight=0.0, retain_weight=0.0, npo_beta=5.0, simnpo_delta=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "npo_gdrr"}, r"Unknown unlearning method 'npo_gdrr'; choose one of 'ga', 'ga_gdr'.*'npo_gdr'"),
        ({"method": "npo", "retain_weight": 0.5},
         r"`retain_weight`=0.5 was given, but method 'npo' has no retain term; drop `retain_weight`, or use 'npo_gdr'"),
        ({"method": "ga", "npo_beta": -1.0}, r"`npo_beta` must be a finite number > 0, got -1.0; pass e.g. `npo_beta=0.1`"),
        ({"method": "npo", "npo_form": "logit"}, r"`npo_form`='logit' is not supported; choose one of 'sequence', 'logits'"),
        ({"method": "simnpo", "simnpo_beta": 0}, r"`simnpo_beta` must be a finite number > 0, got 0"),
        ({"method": "simnpo", "simnpo_delta": float("nan")}, r"`simnpo_delta` must be a finite number, got nan"),
        ({"method": "ga_klr", "klr_form": "prob"}, r"`klr_form`='prob' is not supported; choose one of 'probs', 'logits'"),
        ({"method": "ga_gdr", "forget_weight": -1.0}, r"`forget_weight` must be a finite number >= 0, got -1.0"),
        ({"method": "ga_gdr", "retain_weight": float("inf")}, r"`retain_weight` must be a finite number >= 0, got inf"),
    ],
    ids=["method", "retain_weight_forget_only", "npo_beta", "npo_form", "simnpo_beta", "simnpo_delta", "klr_form",
         "forget_weight", "retain_weight"],
)
def test_invalid_settings_raise_naming_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveSettings(**kwargs)


def test_the_modules_argument_becomes_settings():
    settings = ObjectiveSettings("ga_gdr", retain_weight=1.0)
    assert objective_settings(settings) is settings
    assert objective_settings("npo") == ObjectiveSettings("npo")
    assert objective_settings({"method": "ga_gdr", "retain_weight": 1.0}) == settings
    assert objective_settings(asdict(settings)) == settings, "a checkpoint's hparams rebuild the same settings"
    with pytest.raises(ValueError, match=r"`objective` has no field 'beta'; its fields are method, forget_weight"):
        objective_settings({"method": "npo", "beta": 0.1})
    with pytest.raises(ValueError, match=r"names no method; add one .*or give just the method name"):
        objective_settings({"npo_beta": 0.2})
    with pytest.raises(ValueError, match=r"`objective`=3 is not an unlearning objective: give a method name"):
        objective_settings(3)
    with pytest.raises(ValueError, match=r"Unknown unlearning method 'dpo'"):
        objective_settings("dpo")
