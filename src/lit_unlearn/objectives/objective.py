"""Composition of a forget loss and a retain term: ``L = γ · L_forget + α · L_retain``.

:class:`Objective` holds one forget loss and at most one retain term side by side; there is no chain of
wrapped losses and no reference model unless one of the two terms reads it. :func:`build_objective`
turns the method names used in the MUSE and quantization papers (``"npo_gdr"`` …) into objectives with
the papers' default weights.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

from lit_unlearn.objectives.forget import NPO, NPO_FORMS, SIMNPO_FORMS, GradAscent, SimNPO
from lit_unlearn.objectives.interface import (
    ForgetLoss,
    RetainLoss,
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
)
from lit_unlearn.objectives.retain import GDR, KLR, KLR_FORMS

METHODS: tuple[str, ...] = (
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

# Retain weight α when the caller gives none.
# - GA is unbounded below, so it needs a dominant retain term: α = 100 for ga_gdr / ga_klr is the MUSE
#   full fine-tuning setting used by both quantization papers (Zhang et al. arXiv:2410.16454; Abitante
#   et al. arXiv:2602.13151).
# - NPO saturates by itself, so the same papers use α = 0.1 for npo_gdr / npo_klr.
# - SimNPO is bounded like NPO; its authors' MUSE runs (News and Books, simnpo_gdr) pass a retain
#   coefficient of 0.1, and their code applies that same coefficient to KLR, hence 0.1 for simnpo_klr.
_DEFAULT_RETAIN_WEIGHTS: dict[str, float] = {
    "ga_gdr": 100.0,
    "ga_klr": 100.0,
    "npo_gdr": 0.1,
    "npo_klr": 0.1,
    "simnpo_gdr": 0.1,
    "simnpo_klr": 0.1,
}


class ObjectiveOutput(NamedTuple):
    """Value of an :class:`Objective` on one step.

    Attributes:
        loss: ``forget_weight · forget_loss + retain_weight · retain_loss``, the scalar to backpropagate.
        forget_loss: the unweighted forget term, still attached to the graph (SURE backpropagates it
            alone to rank rows before the combined backward).
        retain_loss: the unweighted retain term, attached; ``None`` without a retain term.
        metrics: detached scalars: ``loss``, ``forget/loss``, ``forget/<name>`` for each metric of the
            forget loss, and the same under ``retain/`` when there is a retain term.
    """

    loss: Tensor
    forget_loss: Tensor
    retain_loss: Tensor | None
    metrics: dict[str, Tensor]


class Objective:
    """An unlearning objective ``L = γ · L_forget + α · L_retain``.

    Args:
        forget: the forget loss, e.g. :class:`GradAscent`, :class:`NPO`, :class:`SimNPO`.
        retain: the retain term, e.g. :class:`GDR`, :class:`KLR`; ``None`` for forget-only methods.
        forget_weight: ``γ`` >= 0; 1 in every paper this package follows.
        retain_weight: ``α`` >= 0; ignored when ``retain`` is ``None``. See :func:`default_retain_weight`
            for the papers' values.

    Raises:
        TypeError: if ``forget`` or ``retain`` is not a loss callable with a ``needs_reference`` flag.
        ValueError: if a weight is negative or not finite; at call time, if a batch or reference logits
            that a term needs are missing.

    Example::

        >>> import torch
        >>> objective = Objective(NPO(beta=0.1), GDR(), retain_weight=0.1)
        >>> objective.needs_forget_reference, objective.needs_retain_reference
        (True, False)
        >>> logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        >>> out = objective(logits, labels, logits, labels, forget_ref_logits=logits)
        >>> sorted(out.metrics)
        ['forget/log_ratio', 'forget/loss', 'forget/nll', 'loss', 'retain/loss', 'retain/nll']
    """

    def __init__(
        self,
        forget: ForgetLoss,
        retain: RetainLoss | None = None,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
    ) -> None:
        if not isinstance(forget, ForgetLoss):
            raise TypeError(
                f"`forget` must be a forget loss (a callable with a `needs_reference` flag), got "
                f"{forget!r}; pass e.g. `NPO()` or `GradAscent()`."
            )
        if retain is not None and not isinstance(retain, RetainLoss):
            raise TypeError(
                f"`retain` must be a retain term (a callable with a `needs_reference` flag) or None, got "
                f"{retain!r}; pass e.g. `GDR()` or `KLR()`."
            )
        check_non_negative("forget_weight", forget_weight)
        check_non_negative("retain_weight", retain_weight)
        self.forget = forget
        self.retain = retain
        self.forget_weight = float(forget_weight)
        self.retain_weight = float(retain_weight)

    @property
    def needs_forget_reference(self) -> bool:
        """Whether the reference model's logits on the forget batch are read."""
        return bool(self.forget.needs_reference)

    @property
    def needs_retain_reference(self) -> bool:
        """Whether the reference model's logits on the retain batch are read."""
        return self.retain is not None and bool(self.retain.needs_reference)

    @property
    def needs_reference(self) -> bool:
        """Whether any term reads the reference model; when false, none needs to be kept or run."""
        return self.needs_forget_reference or self.needs_retain_reference

    @property
    def needs_retain(self) -> bool:
        """Whether a retain batch is read; when false, the retain forward pass can be skipped."""
        return self.retain is not None

    def __call__(
        self,
        forget_logits: Tensor,
        forget_labels: Tensor,
        retain_logits: Tensor | None = None,
        retain_labels: Tensor | None = None,
        forget_ref_logits: Tensor | None = None,
        retain_ref_logits: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Evaluate the objective on one forget batch and, if there is a retain term, one retain batch.

        Logits are ``(B, T, V)`` and labels ``(B, T)`` in the Hugging Face causal-LM convention; the
        forget and retain batches may differ in size and length. Reference logits are read only by the
        terms that need them and are detached.
        """
        if self.needs_forget_reference and forget_ref_logits is None:
            raise ValueError(
                f"{self.forget!r} needs `forget_ref_logits` (the reference model's logits on the forget "
                "batch), got None; run the model before unlearning (with LoRA: adapter disabled) on the "
                "forget batch under `torch.no_grad()` and pass its logits."
            )
        forget_out = self.forget(forget_logits, forget_labels, forget_ref_logits)
        loss = self.forget_weight * forget_out.loss
        metrics = {f"forget/{name}": value for name, value in forget_out.metrics.items()}
        metrics["forget/loss"] = forget_out.loss.detach()

        retain_loss = None
        if self.retain is not None:
            if retain_logits is None or retain_labels is None:
                raise ValueError(
                    f"{self.retain!r} needs `retain_logits` and `retain_labels`, got "
                    f"{'None' if retain_logits is None else 'logits'} and "
                    f"{'None' if retain_labels is None else 'labels'}; pass a retain batch, or use an "
                    "objective without a retain term (e.g. method 'npo' rather than 'npo_gdr')."
                )
            if self.needs_retain_reference and retain_ref_logits is None:
                raise ValueError(
                    f"{self.retain!r} needs `retain_ref_logits` (the reference model's logits on the "
                    "retain batch), got None; run the model before unlearning (with LoRA: adapter "
                    "disabled) on the retain batch under `torch.no_grad()` and pass its logits."
                )
            retain_out = self.retain(retain_logits, retain_labels, retain_ref_logits)
            retain_loss = retain_out.loss
            loss = loss + self.retain_weight * retain_loss
            metrics.update({f"retain/{name}": value for name, value in retain_out.metrics.items()})
            metrics["retain/loss"] = retain_loss.detach()

        metrics["loss"] = loss.detach()
        return ObjectiveOutput(
            loss=loss, forget_loss=forget_out.loss, retain_loss=retain_loss, metrics=metrics
        )

    def __repr__(self) -> str:
        if self.retain is None:
            # The retain weight is inert without a retain term; showing it would suggest otherwise.
            return f"Objective(forget={self.forget!r}, forget_weight={self.forget_weight})"
        return (
            f"Objective(forget={self.forget!r}, retain={self.retain!r}, "
            f"forget_weight={self.forget_weight}, retain_weight={self.retain_weight})"
        )


def _check_method(method: str) -> None:
    if method not in METHODS:
        choices = ", ".join(repr(m) for m in METHODS)
        raise ValueError(
            f"Unknown unlearning method {method!r}; choose one of {choices} "
            "(forget loss, optionally followed by `_gdr` or `_klr` for the retain term)."
        )


def default_retain_weight(method: str) -> float | None:
    """The paper default retain weight ``α`` for ``method``; ``None`` for methods without a retain term.

    100 for ``ga_gdr`` / ``ga_klr`` and 0.1 for ``npo_gdr`` / ``npo_klr`` (MUSE settings of Zhang et al.
    arXiv:2410.16454 and Abitante et al. arXiv:2602.13151); 0.1 for ``simnpo_gdr`` / ``simnpo_klr`` (the
    SimNPO authors' MUSE setting, arXiv:2410.07163).

    Raises:
        ValueError: if ``method`` is not one of :data:`METHODS`.
    """
    _check_method(method)
    return _DEFAULT_RETAIN_WEIGHTS.get(method)


def build_objective(
    method: str,
    *,
    forget_weight: float = 1.0,
    retain_weight: float | None = None,
    npo_beta: float = 0.1,
    npo_form: Literal["sequence", "logits"] = "sequence",
    simnpo_beta: float = 2.5,
    simnpo_delta: float = 0.0,
    simnpo_form: Literal["sequence", "logits"] = "sequence",
    klr_form: Literal["probs", "logits"] = "probs",
) -> Objective:
    """Build the objective a method name stands for, e.g. ``"npo_gdr"`` → ``NPO`` + 0.1 · ``GDR``.

    Args:
        method: one of :data:`METHODS`: forget loss ``ga`` | ``npo`` | ``simnpo``, optionally followed by
            ``_gdr`` or ``_klr``.
        forget_weight: ``γ``, 1 in the papers.
        retain_weight: ``α``; ``None`` takes :func:`default_retain_weight`. Must stay ``None`` for a
            method without a retain term.
        npo_beta: ``β`` of :class:`NPO`.
        npo_form: ``form`` of :class:`NPO` (``"logits"`` reproduces MUSE's code, not the paper).
        simnpo_beta: ``β`` of :class:`SimNPO`.
        simnpo_delta: margin ``δ`` of :class:`SimNPO`.
        simnpo_form: ``form`` of :class:`SimNPO`.
        klr_form: ``form`` of :class:`KLR` (``"logits"`` reproduces MUSE's code, not the paper).

    Every knob is validated, including those the method does not use, so a typo in a config fails early.

    Raises:
        ValueError: for an unknown ``method``, a ``retain_weight`` given to a method without a retain
            term, or an invalid knob.

    Example::

        >>> build_objective("ga_klr")
        Objective(forget=GradAscent(), retain=KLR(form='probs'), forget_weight=1.0, retain_weight=100.0)
    """
    _check_method(method)
    check_positive("npo_beta", npo_beta)
    check_choice("npo_form", npo_form, NPO_FORMS)
    check_positive("simnpo_beta", simnpo_beta)
    check_finite("simnpo_delta", simnpo_delta)
    check_choice("simnpo_form", simnpo_form, SIMNPO_FORMS)
    check_choice("klr_form", klr_form, KLR_FORMS)

    forget_name, _, retain_name = method.partition("_")
    forget: ForgetLoss
    if forget_name == "ga":
        forget = GradAscent()
    elif forget_name == "npo":
        forget = NPO(beta=npo_beta, form=npo_form)
    else:
        forget = SimNPO(beta=simnpo_beta, delta=simnpo_delta, form=simnpo_form)

    if not retain_name:
        if retain_weight is not None:
            raise ValueError(
                f"`retain_weight`={retain_weight!r} was given, but method {method!r} has no retain term; "
                f"drop `retain_weight`, or use {method + '_gdr'!r} or {method + '_klr'!r}."
            )
        return Objective(forget, None, forget_weight=forget_weight)

    retain: RetainLoss = GDR() if retain_name == "gdr" else KLR(form=klr_form)
    if retain_weight is None:
        retain_weight = _DEFAULT_RETAIN_WEIGHTS[method]
    return Objective(forget, retain, forget_weight=forget_weight, retain_weight=retain_weight)
