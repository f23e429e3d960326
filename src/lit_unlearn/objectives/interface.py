"""What a forget loss and a retain term look like to :class:`~lit_unlearn.objectives.Objective`.

Losses are small callables without parameters. The objective composes one forget loss with at most one
retain term; nothing here is meant to be subclassed, only satisfied (composition, not inheritance).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor


class LossOutput(NamedTuple):
    """Value of one loss term on one batch.

    Attributes:
        loss: scalar tensor that carries the gradient.
        metrics: detached scalar tensors for logging, keyed by short names such as ``"nll"``.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


# Both sides return the same structure; the aliases keep signatures readable.
ForgetOutput = LossOutput
RetainOutput = LossOutput


@runtime_checkable
class ForgetLoss(Protocol):
    """A loss on the forget batch, e.g. :class:`GradAscent`, :class:`NPO`, :class:`SimNPO`.

    ``logits`` are ``(B, T, V)`` and ``labels`` ``(B, T)`` in the Hugging Face causal-LM convention
    (position ``t`` predicts ``labels[:, t + 1]``, ``-100`` is ignored). ``ref_logits`` are the
    reference model's logits on the same batch, required when ``needs_reference`` is true.
    """

    needs_reference: bool

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput: ...


@runtime_checkable
class RetainLoss(Protocol):
    """A loss on the retain batch, e.g. :class:`GDR`, :class:`KLR`; conventions as in :class:`ForgetLoss`."""

    needs_reference: bool

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput: ...


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming ``name``, the bad ``value`` and the ``allowed`` values."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"`{name}`={value!r} is not supported; choose one of {choices}.")


def check_positive(name: str, value: float) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}; pass e.g. `{name}=0.1`.")


def check_non_negative(name: str, value: float) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}; pass e.g. `{name}=1.0`.")


def check_finite(name: str, value: float) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}; pass e.g. `{name}=0.0`.")


def require_reference(owner: str, ref_logits: Tensor | None, logits: Tensor) -> Tensor:
    """Return ``ref_logits`` detached, after checking it is present and shaped like ``logits``.

    The reference model is frozen by definition, so its logits never take part in the gradient, even
    when a caller forgot ``torch.no_grad()`` around the reference forward.
    """
    if ref_logits is None:
        raise ValueError(
            f"{owner} needs `ref_logits`, the reference model's logits on the same batch, but got None; "
            "compute them with the model before unlearning (with LoRA: the adapter disabled) under "
            "`torch.no_grad()` and pass them."
        )
    if ref_logits.shape != logits.shape:
        raise ValueError(
            f"{owner}: `ref_logits` has shape {tuple(ref_logits.shape)} but `logits` has shape "
            f"{tuple(logits.shape)}; run the reference model on exactly the same input ids."
        )
    return ref_logits.detach()
