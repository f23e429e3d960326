"""ROUGE-L memorisation metrics of MUSE: VerbMem (verbatim continuation) and KnowMem (QA answers).

Both are the mean ROUGE-L F1 × 100 between generations and references, summed over items as
torchmetrics states, so shards evaluated on different ranks add up to the same number as one process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer
from torch import Tensor
from torchmetrics import Metric

from lit_unlearn.metrics.conventions import Convention, get_convention

__all__ = ["KNOWMEM_STOP_STRINGS", "KnowMem", "MeanRougeL", "VerbMem", "cut_at_stop_strings", "rouge_l_f1"]

# MUSE cuts QA generations at the first of these, so an answer followed by a hallucinated next
# "Question: ..." turn is scored on the answer alone.
KNOWMEM_STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")


@functools.lru_cache(maxsize=2)
def _scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_f1(prediction: str, target: str, use_stemmer: bool = False) -> float:
    """ROUGE-L F1 in [0, 1] of ``prediction`` against ``target`` (``rouge_score``'s tokenizer: lower case,
    alphanumeric tokens)."""
    return _scorer(use_stemmer).score(target, prediction)["rougeL"].fmeasure


def cut_at_stop_strings(text: str, stop_strings: Sequence[str] = KNOWMEM_STOP_STRINGS) -> str:
    """``text`` up to (excluding) the earliest occurrence of any of ``stop_strings``."""
    end = len(text)
    for stop in stop_strings:
        index = text.find(stop)
        if 0 <= index < end:
            end = index
    return text[:end]


def _check_pairs(predictions: Sequence[str], targets: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(targets, str):
        raise TypeError(
            "`predictions` and `targets` must be lists of strings, got a single string; wrap it: "
            "`update([p], [t])`."
        )
    if len(predictions) != len(targets):
        raise ValueError(
            f"`predictions` has {len(predictions)} items but `targets` has {len(targets)}; pass one target "
            "per prediction."
        )


class MeanRougeL(Metric):
    """Mean ROUGE-L F1 × 100 of predictions against targets.

    Args:
        convention: ``"muse"`` (no stemming) or ``"open-unlearning"`` (Porter stemming); see
            :mod:`lit_unlearn.metrics.conventions`.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    f1_sum: Tensor
    count: Tensor

    def __init__(self, convention: str | Convention = "muse", **kwargs) -> None:
        super().__init__(**kwargs)
        self.convention = get_convention(convention)
        self.add_state("f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], targets: Sequence[str]) -> None:
        """Score each prediction against the target at the same position."""
        _check_pairs(predictions, targets)
        stem = self.convention.use_stemmer
        scores = [rouge_l_f1(p, t, use_stemmer=stem) for p, t in zip(predictions, targets)]
        self.f1_sum += sum(scores)
        self.count += len(scores)

    def compute(self) -> Tensor:
        """Mean ROUGE-L F1 × 100 over every item seen (on every process); NaN before any item."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.f1_sum.device)
        return 100.0 * self.f1_sum / self.count


class VerbMem(MeanRougeL):
    """VerbMem (lower is better on the forget set): mean ROUGE-L F1 × 100 of greedy continuations of
    forget-set excerpts against the true continuations.

    ``targets`` are the ground truths as the convention wants them; under ``muse`` the caller cuts them to
    their first 128 tokens first (it needs the tokenizer, see :func:`lit_unlearn.evaluation.truncate_tokens`).

    Example::

        >>> metric = VerbMem()
        >>> metric.update(["the cat sat on the mat"], ["the cat sat on a mat"])
        >>> round(metric.compute().item(), 2)
        83.33
    """

    higher_is_better = False


class KnowMem(MeanRougeL):
    """KnowMem: mean ROUGE-L F1 × 100 of generated answers against reference answers, after cutting each
    generation at the first of ``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"``.

    Lower is better on forget-set questions, higher on retain-set questions (MUSE's *utility*).

    Example::

        >>> metric = KnowMem()
        >>> metric.update(["Paris\\n\\nQuestion: What is ..."], ["Paris"])
        >>> metric.compute().item()
        100.0
    """

    def update(self, predictions: Sequence[str], targets: Sequence[str]) -> None:
        """Cut each prediction at the stop strings, then score it against its target."""
        _check_pairs(predictions, targets)
        super().update([cut_at_stop_strings(p) for p in predictions], targets)
