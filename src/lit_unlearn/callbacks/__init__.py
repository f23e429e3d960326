"""Lightning callbacks of lit-unlearn: add them to any Trainer.

- :class:`QuantizationSurvival`: every N steps, does the update survive nf4/fp4/int4/int8 rounding?
- :class:`QuantizedEvaluation`: MUSE metrics at full precision, 8-bit and 4-bit (adapter merged first).
"""

from lit_unlearn.callbacks.quantization_survival import QuantizationSurvival
from lit_unlearn.callbacks.quantized_evaluation import QuantizedEvaluation

__all__ = ["QuantizationSurvival", "QuantizedEvaluation"]
