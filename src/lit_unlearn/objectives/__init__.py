"""Unlearning objectives in pure torch: forget losses, retain terms, their composition, and SURE masks.

``L = γ · L_forget + α · L_retain``: pick a forget loss (:class:`GradAscent`, :class:`NPO`,
:class:`SimNPO`) and optionally a retain term (:class:`GDR`, :class:`KLR`), compose them with
:class:`Objective`, or name a method from :data:`METHODS` with :func:`build_objective` (or, with its knobs as
one value, :class:`ObjectiveSettings`, the module's ``objective``). All losses take
causal-LM logits ``(B, T, V)`` and labels ``(B, T)`` in the Hugging Face convention.
"""

from lit_unlearn.objectives.forget import NPO, NPO_FORMS, SIMNPO_FORMS, GradAscent, SimNPO, npo_initial_value
from lit_unlearn.objectives.interface import ForgetLoss, ForgetOutput, LossOutput, RetainLoss, RetainOutput
from lit_unlearn.objectives.logprobs import (
    IGNORE_INDEX,
    check_logits_labels,
    mean_token_nll,
    scored_positions,
    sequence_logprob,
    sequence_mean_logprob,
    token_logprobs,
)
from lit_unlearn.objectives.objective import (
    METHODS,
    Objective,
    ObjectiveOutput,
    build_objective,
    default_retain_weight,
)
from lit_unlearn.objectives.retain import GDR, KLR, KLR_FORMS, token_kl
from lit_unlearn.objectives.settings import Method, ObjectiveSettings, objective_settings
from lit_unlearn.objectives.sure import (
    SURE_SCOPES,
    apply_row_masks_,
    percentile_threshold,
    row_grad_norms,
    sure_row_masks,
)

__all__ = [
    "GDR",
    "IGNORE_INDEX",
    "KLR",
    "KLR_FORMS",
    "METHODS",
    "NPO",
    "NPO_FORMS",
    "SIMNPO_FORMS",
    "SURE_SCOPES",
    "ForgetLoss",
    "ForgetOutput",
    "GradAscent",
    "LossOutput",
    "Method",
    "Objective",
    "ObjectiveOutput",
    "ObjectiveSettings",
    "RetainLoss",
    "RetainOutput",
    "SimNPO",
    "apply_row_masks_",
    "build_objective",
    "check_logits_labels",
    "default_retain_weight",
    "mean_token_nll",
    "npo_initial_value",
    "objective_settings",
    "percentile_threshold",
    "row_grad_norms",
    "scored_positions",
    "sequence_logprob",
    "sequence_mean_logprob",
    "sure_row_masks",
    "token_kl",
    "token_logprobs",
]
