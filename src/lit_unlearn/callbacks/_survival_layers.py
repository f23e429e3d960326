"""The watched layers of the survival check, for the callbacks that share them.

They live in :mod:`lit_unlearn.survival.layers`; this module names them for ``lit_unlearn.callbacks``.
"""

from __future__ import annotations

from lit_unlearn.survival.layers import delta_buffer, model_of, prepare_references, select_linear_layers

__all__ = ["delta_buffer", "model_of", "prepare_references", "select_linear_layers"]
