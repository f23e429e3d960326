"""The objective of an unlearning run as one value: the method and the knobs that go with it.

:class:`ObjectiveSettings` is the module's ``objective`` argument: a method name from :data:`METHODS` and
the weights and loss parameters :func:`build_objective` takes, with the same defaults, checked together
when it is made (a typo in a config fails before any model is read). A plain method name stands for the
method with the default knobs (:func:`objective_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from lit_unlearn.objectives.objective import Objective, build_objective

__all__ = ["Method", "ObjectiveSettings", "objective_settings"]

#: The method names of :data:`~lit_unlearn.objectives.METHODS`, as a type (YAML parsing checks them).
Method = Literal["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "simnpo_gdr", "simnpo_klr"]


@dataclass(frozen=True)
class ObjectiveSettings:
    """An unlearning objective ``L = forget_weight · L_forget + retain_weight · L_retain``, by name and knobs.

    As the module's ``objective`` in YAML: ``objective: {method: npo_gdr, retain_weight: 1.0}``, or just
    ``objective: npo_gdr`` for the method with every knob at its default. Every knob is checked, those
    the method does not use included, so a typo in a config fails early.

    Attributes:
        method: Method name, see :data:`~lit_unlearn.objectives.METHODS`: forget loss ``ga`` | ``npo`` |
            ``simnpo``, optionally followed by ``_gdr`` or ``_klr`` for the retain term.
        forget_weight: γ, the weight of the forget loss.
        retain_weight: α, the weight of the retain term; ``None`` takes the paper's value for the method
            (100 for GA+GDR/GA+KLR, 0.1 for NPO+GDR/NPO+KLR). Must stay ``None`` for a forget-only method.
        npo_beta: NPO's β (paper: 0.1).
        npo_form: ``sequence`` is the paper's NPO on summed sequence log-likelihoods; ``logits`` is the
            raw-logit variant of MUSE's released code, kept to reproduce its numbers.
        simnpo_beta: SimNPO's β.
        simnpo_delta: SimNPO's margin δ.
        klr_form: ``probs`` is per-token KL(p_ref ‖ p_θ); ``logits`` is MUSE's raw-logit variant.

    Raises:
        ValueError: for an unknown ``method``, a ``retain_weight`` given to a method without a retain term,
            a negative or non-finite weight, or an invalid knob; the message names the value and the fix.

    Example::

        >>> ObjectiveSettings("ga_klr").build()
        Objective(forget=GradAscent(), retain=KLR(form='probs'), forget_weight=1.0, retain_weight=100.0)
    """

    method: Method
    forget_weight: float = 1.0
    retain_weight: float | None = None
    npo_beta: float = 0.1
    npo_form: Literal["sequence", "logits"] = "sequence"
    simnpo_beta: float = 2.5
    simnpo_delta: float = 0.0
    klr_form: Literal["probs", "logits"] = "probs"

    def __post_init__(self) -> None:
        # The objective's own checks, so the messages are those of `build_objective` (the losses it
        # builds hold no tensors: building one is the check).
        self.build()

    def build(self) -> Objective:
        """The objective these settings name, e.g. ``npo_gdr`` → ``NPO`` + 0.1 · ``GDR``."""
        return build_objective(
            self.method,
            forget_weight=self.forget_weight,
            retain_weight=self.retain_weight,
            npo_beta=self.npo_beta,
            npo_form=self.npo_form,
            simnpo_beta=self.simnpo_beta,
            simnpo_delta=self.simnpo_delta,
            klr_form=self.klr_form,
        )


def objective_settings(objective: ObjectiveSettings | str | dict[str, Any]) -> ObjectiveSettings:
    """The module's ``objective`` argument as :class:`ObjectiveSettings`.

    ``objective`` is the settings, a method name (its knobs at their defaults), or the dict of the
    settings' fields (as YAML and a checkpoint's ``hparams`` give it).

    Raises:
        ValueError: for a dict with unknown fields or without a ``method``, a value of another type, or
            settings :class:`ObjectiveSettings` refuses.
    """
    if isinstance(objective, ObjectiveSettings):
        return objective
    if isinstance(objective, str):
        return ObjectiveSettings(objective)
    if isinstance(objective, dict):
        names = [field.name for field in fields(ObjectiveSettings)]
        unknown = sorted(set(objective) - set(names))
        if unknown:
            raise ValueError(
                f"`objective` has no field {', '.join(map(repr, unknown))}; its fields are {', '.join(names)} "
                "(e.g. `objective: {method: npo_gdr, retain_weight: 0.1}`)."
            )
        if "method" not in objective:
            raise ValueError(
                f"`objective`={objective!r} names no method; add one (e.g. `objective: {{method: npo_gdr, "
                "retain_weight: 0.1}`), or give just the method name (`objective: npo_gdr`)."
            )
        return ObjectiveSettings(**objective)
    raise ValueError(
        f"`objective`={objective!r} is not an unlearning objective: give a method name (YAML: "
        "`objective: npo_gdr`), an ObjectiveSettings or its fields (`objective: {method: npo_gdr, "
        "retain_weight: 0.1}`)."
    )
