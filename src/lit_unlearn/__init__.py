"""lit-unlearn: LLM unlearning that survives 4-bit quantization, as a PyTorch Lightning plugin.

The public API::

    from lit_unlearn import UnlearningModule, ForgetRetainDataModule, LoRA, FourBitBase, ObjectiveSettings, TextSource
    from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation

The Lightning-facing names are imported on first use, so the pure-torch parts
(``lit_unlearn.objectives``, ``lit_unlearn.quantization``) import without Lightning or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from lit_unlearn._logging import silence_bitsandbytes

silence_bitsandbytes()

__version__ = "0.1.0"

_LAZY = {
    "ForgetRetainDataModule": "lit_unlearn.data",
    "FourBitBase": "lit_unlearn.four_bit_base",
    "LoRA": "lit_unlearn.adapters",
    "ObjectiveSettings": "lit_unlearn.objectives",
    "TextSource": "lit_unlearn.data",
    "UnlearningModule": "lit_unlearn.module",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_unlearn' has no attribute {name!r}")
