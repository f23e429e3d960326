"""PrivLeak: how well a membership-inference attack tells forget texts from unseen holdout texts.

The attack is Min-K% Prob (Shi et al., 2024, "Detecting Pretraining Data from Large Language Models")
with K = 40%: a text's score is minus the mean of its lowest 40% token log-probabilities, so texts the
model finds likely (members) get low scores. MUSE then computes the ROC AUC with forget texts labelled 0
and holdout texts labelled 1, ranking by minus the score; a model that still memorises the forget set
ranks every forget text above every holdout text and gets AUC → 0. PrivLeak compares that AUC with the
AUC of a model retrained without the forget set (the ideal unlearned model):

    PrivLeak = (AUC − AUC_retrain) / AUC_retrain × 100     (→ 0 is best; −100 means full memorisation)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from lit_unlearn.metrics.conventions import Convention, get_convention, resolve_auc_retrain

__all__ = ["MIN_K", "PrivLeak", "membership_auc", "min_k_percent_score", "privleak_from_auc"]

# MUSE reports the Min-40% attack ("forget_holdout_Min-40%").
MIN_K = 0.4


def min_k_percent_score(logprobs: Tensor, mask: Tensor | None = None, k: float = MIN_K) -> Tensor:
    """Min-K% Prob score of each sequence: minus the mean of its lowest ``k`` share of token log-probs.

    Args:
        logprobs: ``(B, T)`` (or ``(T,)``) next-token log-probabilities.
        mask: ``(B, T)`` bool, true where a token is scored; ``None`` scores every position.
        k: Share of the lowest log-probs to average, in (0, 1]. The count is ``floor(k · n)`` like MUSE's
            code, but at least one token, so short texts get a finite score instead of NaN.

    Returns:
        ``(B,)`` float32 scores (``()`` for 1-D input); higher means less likely under the model.

    Raises:
        ValueError: if ``k`` is outside (0, 1], shapes differ, or a sequence has no scored token.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"`k`={k!r} must be a share in (0, 1]; MUSE uses k=0.4 (Min-40%).")
    squeeze = logprobs.dim() == 1
    logprobs = logprobs.float().reshape(-1, logprobs.shape[-1]) if squeeze else logprobs.float()
    if mask is None:
        mask = torch.ones_like(logprobs, dtype=torch.bool)
    mask = mask.reshape(logprobs.shape) if squeeze and mask.dim() == 1 else mask
    if mask.shape != logprobs.shape or logprobs.dim() != 2:
        raise ValueError(
            f"`logprobs` {tuple(logprobs.shape)} and `mask` {tuple(mask.shape)} must both be (batch, tokens)."
        )
    counts = mask.sum(dim=-1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"Sequences {empty} have no scored token, so Min-K% is undefined; drop empty texts.")
    lowest_first = logprobs.masked_fill(~mask, math.inf).sort(dim=-1).values
    take = (counts.float() * k).floor().long().clamp_min(1)
    keep = torch.arange(logprobs.shape[-1], device=logprobs.device).unsqueeze(0) < take.unsqueeze(1)
    scores = -(lowest_first.masked_fill(~keep, 0.0).sum(dim=-1) / take)
    return scores[0] if squeeze else scores


def _as_tensor(values: Tensor | Sequence, dtype: torch.dtype) -> Tensor:
    return (
        values.detach().flatten().to(dtype)
        if isinstance(values, Tensor)
        else torch.tensor(list(values), dtype=dtype)
    )


def _concat(state: list[Tensor] | Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=dtype)
    return dim_zero_cat(state).to(dtype)


def membership_auc(scores: Tensor | Sequence[float], is_member: Tensor | Sequence[bool]) -> float:
    """ROC AUC of the Min-K% attack in MUSE's orientation: members (forget) labelled 0, non-members
    (holdout) labelled 1, ranked by ``-scores``. Ties count one half (the trapezoidal ROC).

    Raises:
        ValueError: if lengths differ or one of the two groups is empty.
    """
    return float(_auc(_as_tensor(scores, torch.float64), _as_tensor(is_member, torch.bool)))


def _auc(scores: Tensor, is_member: Tensor) -> Tensor:
    if scores.shape != is_member.shape:
        raise ValueError(
            f"`scores` has {scores.numel()} items but `is_member` has {is_member.numel()}; pass one flag per "
            "score."
        )
    members = int(is_member.sum())
    if members == 0 or members == is_member.numel():
        raise ValueError(
            f"The AUC needs both members (forget texts) and non-members (holdout texts), got {members} "
            f"members out of {is_member.numel()} scores; score both the forget and the holdout set."
        )
    return binary_auroc(-scores.double(), (~is_member).long()).double()


def privleak_from_auc(auc: float, auc_retrain: float | None) -> float:
    """``(auc − auc_retrain) / auc_retrain × 100``; NaN when ``auc_retrain`` is ``None``."""
    if auc_retrain is None:
        return float("nan")
    return (auc - auc_retrain) / auc_retrain * 100.0


class PrivLeak(Metric):
    """PrivLeak of the Min-K% Prob attack (→ 0 is best), with the attack's AUC.

    Args:
        auc_retrain: AUC of the retrain model: a number in (0, 1], ``"news"``/``"books"`` for the values
            published with MUSE (0.4772 / 0.5393), or ``None`` for the convention's fallback
            (``muse``: none, PrivLeak is NaN; ``open-unlearning``: 0.5). May be set later as
            ``metric.auc_retrain`` once a retrain model has been scored.
        convention: ``"muse"`` or ``"open-unlearning"``; see :mod:`lit_unlearn.metrics.conventions`.
        kwargs: torchmetrics ``Metric`` options.

    Example::

        >>> metric = PrivLeak(auc_retrain=0.5)
        >>> metric.update([1.0, 1.2, 3.0, 3.5], [True, True, False, False])  # members are more likely
        >>> {k: round(v.item(), 2) for k, v in metric.compute().items()}
        {'auc': 0.0, 'privleak': -100.0}
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    scores: list[Tensor]
    is_member: list[Tensor]

    def __init__(
        self, auc_retrain: float | str | None = None, convention: str | Convention = "muse", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.convention = get_convention(convention)
        self.auc_retrain = resolve_auc_retrain(auc_retrain)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("is_member", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor | Sequence[float], is_member: Tensor | Sequence[bool]) -> None:
        """Add Min-K% scores (see :func:`min_k_percent_score`) and whether each text is a member (forget)."""
        scores_t = _as_tensor(scores, torch.float64).to(self.device)
        member_t = _as_tensor(is_member, torch.bool).to(self.device)
        if scores_t.shape != member_t.shape:
            raise ValueError(
                f"`scores` has {scores_t.numel()} items but `is_member` has {member_t.numel()}; pass one "
                "flag per score."
            )
        self.scores.append(scores_t)
        self.is_member.append(member_t)

    @property
    def auc_retrain(self) -> float | None:
        """AUC of the retrain model given by the user (``None``: the convention's fallback applies)."""
        return self._auc_retrain

    @auc_retrain.setter
    def auc_retrain(self, value: float | str | None) -> None:
        self._auc_retrain = resolve_auc_retrain(value)
        # torchmetrics caches `compute()` until the next update; a new reference must not return the
        # old value.
        self._computed = None

    def effective_auc_retrain(self) -> float | None:
        """The AUC_retrain in use: the given one, else the convention's fallback (``None`` under ``muse``)."""
        return self.auc_retrain if self.auc_retrain is not None else self.convention.auc_retrain_fallback

    def compute(self) -> dict[str, Tensor]:
        """``{"auc": AUC, "privleak": PrivLeak}`` over every score seen on every process."""
        # After a cross-process sync the states are already concatenated tensors, before it lists.
        scores = _concat(self.scores, torch.float64)
        members = _concat(self.is_member, torch.bool)
        auc = _auc(scores, members)
        reference = self.effective_auc_retrain()
        if reference is None:
            rank_zero_warn(
                "PrivLeak is NaN: the `muse` convention has no AUC_retrain to compare with. Pass "
                "`auc_retrain` (0.4772 for MUSE-News, 0.5393 for MUSE-Books, or 'news'/'books'), or score a "
                "retrain model and pass its AUC."
            )
            privleak = torch.tensor(float("nan"), dtype=torch.float64, device=auc.device)
        else:
            privleak = (auc - reference) / reference * 100.0
        return {"auc": auc, "privleak": privleak}
