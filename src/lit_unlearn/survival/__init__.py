"""The survival check without a Trainer: does an update survive the quantization a deployment applies?

* :class:`SurvivalEngine` (``engine.py``): the watched layers and their ``W0``/``Q(W0)`` references, the
  weight-space statistics per layer and scheme (:class:`WeightCheck`), the probe losses of the original and
  current models deployed per scheme, and ``effect_retained`` (:func:`effect_retained`).
* ``layers.py``: which deployed layers are watched, the ``ΔW`` buffer and the references a check reuses.
* ``probe.py``: probe batches split into forget and retain, their mean loss, and runs without side effects.
* ``history.py``: what the checks leave as plain rows: the verdict over steps, the latest per-layer table,
  the CSV file, the end-of-fit summary and the low-survival diagnosis.

``lit_unlearn.callbacks.QuantizationSurvival`` runs one engine per fit: it decides when to check and
sends the numbers to the loggers, its table and its checkpoints. This package imports no Lightning of its
own.
"""

from lit_unlearn.survival.engine import (
    HISTORY_KEYS,
    MIN_FORGET_EFFECT,
    ProbeLosses,
    SurvivalEngine,
    WeightCheck,
    effect_retained,
)

__all__ = [
    "HISTORY_KEYS", "MIN_FORGET_EFFECT", "ProbeLosses", "SurvivalEngine", "WeightCheck", "effect_retained",
]
