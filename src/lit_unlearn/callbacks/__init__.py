"""Lightning callbacks of lit-unlearn: add them to any Trainer.

- :class:`QuantizationSurvival`: every N steps, does the update survive nf4/fp4/int4/int8 rounding?
- :class:`QuantizedEvaluation`: MUSE metrics at full precision, 8-bit and 4-bit (adapter merged first).
- :class:`PreserveQuantization`: train inside the quantization cells of the original model, so its
  quantized deployment stays bit-identical (the reversion, by construction).
- :class:`MagnitudeFloor`: at fit end, push just enough of the update across its cell edges that the
  format you ship keeps the forgetting, and save that model (the remedy when the check says it won't).
- :class:`ProgressLog`: plain progress lines where no terminal shows a progress bar.
- :class:`SaveOnInterrupt`: Ctrl-C or SIGTERM ends the step, saves ``last.ckpt`` and says how to resume.
"""

from lit_unlearn.callbacks.magnitude_floor import MagnitudeFloor
from lit_unlearn.callbacks.preserve_quantization import PreserveQuantization
from lit_unlearn.callbacks.progress_log import ProgressLog
from lit_unlearn.callbacks.quantization_survival import QuantizationSurvival
from lit_unlearn.callbacks.quantized_evaluation import QuantizedEvaluation
from lit_unlearn.callbacks.save_on_interrupt import SaveOnInterrupt

__all__ = ["MagnitudeFloor", "PreserveQuantization", "ProgressLog", "QuantizationSurvival", "QuantizedEvaluation", "SaveOnInterrupt"]
