"""MUSE metrics as torchmetrics ``Metric``s (VerbMem, KnowMem, PrivLeak), so they sync across processes.

The metric formulas live here and import torch, torchmetrics and ``rouge_score`` only; generating text
and scoring it with a model is :mod:`lit_unlearn.evaluation`'s job.
"""

from lit_unlearn.metrics.conventions import (
    CONVENTIONS,
    PUBLISHED_AUC_RETRAIN,
    Convention,
    ConventionName,
    get_convention,
    resolve_auc_retrain,
)
from lit_unlearn.metrics.privleak import (
    MIN_K,
    PrivLeak,
    membership_auc,
    min_k_percent_score,
    privleak_from_auc,
)
from lit_unlearn.metrics.rouge import (
    KNOWMEM_STOP_STRINGS,
    KnowMem,
    MeanRougeL,
    VerbMem,
    cut_at_stop_strings,
    rouge_l_f1,
)

__all__ = [
    "CONVENTIONS",
    "KNOWMEM_STOP_STRINGS",
    "MIN_K",
    "PUBLISHED_AUC_RETRAIN",
    "Convention",
    "ConventionName",
    "KnowMem",
    "MeanRougeL",
    "PrivLeak",
    "VerbMem",
    "cut_at_stop_strings",
    "get_convention",
    "membership_auc",
    "min_k_percent_score",
    "privleak_from_auc",
    "resolve_auc_retrain",
    "rouge_l_f1",
]
