"""SURE: saliency-based unlearning with a large learning rate (Zhang et al., P2).

P2 observes that 4-bit quantization undoes unlearning whose weight updates are too small to cross a
rounding boundary, and that simply raising the learning rate wrecks utility. SURE raises it only where it
matters: each step, rank the output rows ("neurons") of every weight by the norm of the *forget-loss*
gradient, and let the optimizer update only the most salient rows.

Reference: Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025,
arXiv:2410.16454; row saliency after SalUn (Fan et al., ICLR 2024, arXiv:2310.12508).

Faithfulness to P2's released code (``FailureLLMUnlearning``, ``baselines/baselines/iterative.py``,
class ``SURE``), which these functions follow:

* **Global percentile.** The threshold is one percentile over the rows of *all* parameters pooled
  together, not one per matrix: matrices whose forget gradient is small may get no row at all.
  ``scope="per_matrix"`` is offered as a documented alternative that updates the same share of every
  matrix; it is not P2's method.
* **Rows and 1-D parameters.** A row of a parameter with 2 or more dimensions is a slice along dim 0 (an
  output row of a ``Linear``, one token of an embedding), scored by the L2 norm of its gradient. Each
  element of a 1-D parameter (bias, norm weight) is its own "row", scored by ``|g|``, and enters the same
  pool, as in P2's code.
* **Inclusive threshold.** Rows with norm ``>=`` the percentile are kept; the percentile interpolates
  linearly between order statistics, like ``numpy.percentile`` in P2's code.
* **Where the mask applies.** The mask is computed from the forget-loss gradient alone and applied to
  the full gradient (forget + weighted retain) just before the optimizer step.

One quirk of P2's code is *not* reproduced: it backpropagates the forget loss once for the saliency and
then again inside the combined loss, so the forget gradient is counted twice. Computing the saliency
with ``torch.autograd.grad`` (which does not accumulate into ``.grad``) avoids that::

    out = objective(forget_logits, forget_labels, retain_logits, retain_labels, ...)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.forget_loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    masks = sure_row_masks({n: g for (n, _), g in zip(named, grads) if g is not None}, percentile=90.0)
    out.loss.backward()
    apply_row_masks_(dict(named), masks)
    optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from lit_unlearn.objectives.interface import check_choice

SURE_SCOPES: tuple[str, ...] = ("global", "per_matrix")


def row_grad_norms(grad: Tensor) -> Tensor:
    """Saliency of each row of one gradient, ``(rows,)`` float32.

    L2 norm over all dimensions but the first for a tensor of 2 or more dimensions; ``|g|`` per element
    for a 1-D tensor; a 0-d tensor counts as one row.
    """
    g = grad.detach().float()
    if g.dim() <= 1:
        return g.abs().reshape(-1)
    return torch.linalg.vector_norm(g.flatten(1), dim=1)


def percentile_threshold(values: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile of ``values`` (flattened), linearly interpolated like ``numpy.percentile``.

    Sorting instead of ``torch.quantile``, which refuses inputs of more than 2**24 elements, so the
    number of pooled rows is never a limit.
    """
    ordered = values.detach().float().reshape(-1).sort().values
    position = q / 100.0 * (ordered.numel() - 1)
    lower = math.floor(position)
    upper = min(lower + 1, ordered.numel() - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def sure_row_masks(
    grads: Mapping[str, Tensor],
    percentile: float = 90.0,
    scope: Literal["global", "per_matrix"] = "global",
) -> dict[str, Tensor]:
    """Select the rows whose forget-loss gradient norm reaches the ``percentile``.

    Args:
        grads: forget-loss gradient of each trainable parameter, by parameter name. Leave out parameters
            that received no gradient.
        percentile: in ``[0, 100]``; P2 uses 90, i.e. the top 10% of rows are updated.
        scope: ``"global"`` (P2) pools the rows of all parameters under one threshold; ``"per_matrix"``
            thresholds each parameter separately.

    Returns:
        ``{name: mask}`` with ``mask`` a bool tensor of shape ``(rows,)`` on the gradient's device, true
        for rows to update. ``rows`` is ``grad.shape[0]`` (the number of elements for a 1-D gradient).

    Raises:
        ValueError: if ``grads`` is empty, ``percentile`` is outside ``[0, 100]`` or ``scope`` is unknown.
        TypeError: if a value of ``grads`` is not a tensor (e.g. ``None`` for a parameter without grad).

    Example::

        >>> import torch
        >>> grads = {"w": torch.arange(20.0).reshape(10, 2), "b": torch.zeros(5)}
        >>> masks = sure_row_masks(grads, percentile=90.0)  # 15 rows pooled, the top 2 kept
        >>> masks["w"].nonzero().flatten().tolist(), masks["b"].any().item()
        ([8, 9], False)
    """
    if not grads:
        raise ValueError(
            "`grads` is empty; pass the forget-loss gradient of each trainable parameter, e.g. "
            "`{n: p.grad for n, p in model.named_parameters() if p.grad is not None}`."
        )
    if not (isinstance(percentile, (int, float)) and 0.0 <= percentile <= 100.0):
        raise ValueError(f"`percentile` must be a number in [0, 100], got {percentile!r}; P2 uses 90.0.")
    check_choice("scope", scope, SURE_SCOPES)
    for name, grad in grads.items():
        if not isinstance(grad, Tensor):
            raise TypeError(
                f"`grads[{name!r}]` must be a tensor, got {type(grad).__name__}; leave out parameters "
                "that received no gradient."
            )

    norms = {name: row_grad_norms(grad) for name, grad in grads.items()}
    if scope == "per_matrix":
        return {name: n >= percentile_threshold(n, percentile) for name, n in norms.items()}
    # One threshold for all rows, computed on the first gradient's device (model-parallel gradients
    # may live on several devices; the pooled norms are small: one float per row).
    device = next(iter(norms.values())).device
    threshold = percentile_threshold(torch.cat([n.to(device) for n in norms.values()]), percentile)
    return {name: n >= threshold.to(n.device) for name, n in norms.items()}


def apply_row_masks_(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero, in place, the gradient rows that ``masks`` does not select.

    Args:
        params: by name, either ``nn.Parameter`` objects, whose ``.grad`` is masked (skipped while it
            is ``None``), or gradient tensors, masked themselves. ``dict(model.named_parameters())``
            works as is.
        masks: ``{name: (rows,) bool}`` from :func:`sure_row_masks`.

    Raises:
        ValueError: if a gradient has no mask, or a mask does not have one entry per row.

    Example::

        >>> import torch
        >>> grad = torch.ones(3, 2)
        >>> apply_row_masks_({"w": grad}, {"w": torch.tensor([True, False, True])})
        >>> grad.sum(dim=1).tolist()
        [2.0, 0.0, 2.0]
    """
    for name, value in params.items():
        grad = value.grad if isinstance(value, nn.Parameter) else value
        if grad is None:
            continue
        if name not in masks:
            raise ValueError(
                f"No mask for {name!r}, which has a gradient; compute the masks with `sure_row_masks` "
                "from the gradients of the same parameters, or leave this parameter out of `params`."
            )
        mask = masks[name]
        rows = grad.shape[0] if grad.dim() >= 1 else 1
        if mask.shape != (rows,):
            raise ValueError(
                f"The mask for {name!r} has shape {tuple(mask.shape)}, but its gradient has shape "
                f"{tuple(grad.shape)}, which needs a ({rows},) mask; recompute the masks from this "
                "model's gradients."
            )
        # masked_fill_ rather than a multiply: a non-finite gradient in an unselected row must become 0
        # too, not NaN (NaN · 0 = NaN).
        keep = mask.to(device=grad.device, dtype=torch.bool)
        # Broadcast the row mask over the remaining dimensions (a 0-d gradient takes the single entry).
        keep = keep.reshape((rows,) + (1,) * (grad.dim() - 1)) if grad.dim() >= 1 else keep.reshape(())
        grad.masked_fill_(~keep, 0)
