"""Weight quantization as deployments apply it, and whether an unlearning update survives it (pure torch).

Formats (:data:`SCHEMES`): bitsandbytes' ``"nf4"`` and ``"fp4"`` (codes and scales bit-identical to
``quantize_4bit``, values to what its CUDA kernel decodes; :mod:`~lit_unlearn.quantization.bnb_decode`
says where its CPU kernels decode otherwise), LLM.int8's row-wise ``"int8"`` weights (bit-identical to
``Int8Params``), round-to-nearest ``"int2"`` … ``"int7"``, ``"rtn8"`` with ``-asym`` variants, and the
half-precision casts ``"bf16"``, ``"fp16"``.

Example::

    >>> import torch
    >>> from lit_unlearn.quantization import fake_quantize, quantize, survival_stats
    >>> w0 = torch.randn(64, 128) * 0.02
    >>> w1 = w0 + 1e-4 * torch.randn_like(w0)
    >>> ref = quantize(w0, "nf4")                  # Q(W0) once, e.g. for a frozen LoRA base
    >>> stats = survival_stats(w0, w1, "nf4", reference=ref)
    >>> 0.0 <= stats.changed <= 1.0
    True
"""

from lit_unlearn.quantization.bnb4 import FP4_CODE_OF_LEVEL, NF4_LEVELS
from lit_unlearn.quantization.functional import QuantizedTensor, dequantize, fake_quantize, quantize
from lit_unlearn.quantization.model import OUTPUT_HEAD_NAMES, default_filter, quantize_model_
from lit_unlearn.quantization.schemes import (
    BNB4_BLOCK_SIZES,
    BNB4_DEFAULT_BLOCK_SIZE,
    RTN_DEFAULT_GROUP_SIZE,
    SCHEMES,
    Scheme,
    get_scheme,
)
from lit_unlearn.quantization.survival import SurvivalStats, survival_stats, survival_stats_delta

__all__ = [
    "BNB4_BLOCK_SIZES",
    "BNB4_DEFAULT_BLOCK_SIZE",
    "FP4_CODE_OF_LEVEL",
    "NF4_LEVELS",
    "OUTPUT_HEAD_NAMES",
    "RTN_DEFAULT_GROUP_SIZE",
    "SCHEMES",
    "QuantizedTensor",
    "Scheme",
    "SurvivalStats",
    "default_filter",
    "dequantize",
    "fake_quantize",
    "get_scheme",
    "quantize",
    "quantize_model_",
    "survival_stats",
    "survival_stats_delta",
]
