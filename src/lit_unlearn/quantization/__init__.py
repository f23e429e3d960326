"""Weight quantization as deployments apply it, and whether an unlearning update survives it (pure torch).

Formats (:data:`SCHEMES`): bitsandbytes' ``"nf4"`` and ``"fp4"`` (codes and scales bit-identical to
``quantize_4bit``, values to what its CUDA kernel decodes; :mod:`~lit_unlearn.quantization.bnb_decode`
says where its CPU kernels decode otherwise), LLM.int8's row-wise ``"int8"`` weights (bit-identical to
``Int8Params``), round-to-nearest ``"int2"`` … ``"int7"``, ``"rtn8"`` with ``-asym`` variants, the
half-precision casts ``"bf16"``, ``"fp16"``, and llama.cpp's GGUF formats ``"q8_0"``, ``"q4_0"``, ``"q4_1"``,
``"q5_0"``, ``"q5_1"``, ``"q4_k"``, ``"q5_k"``, ``"q6_k"`` (bit-identical to ggml's reference quantizers;
:func:`gguf_bytes` gives the bytes a ``.gguf`` file stores) with the mixtures ``"q4_k_m"``, ``"q5_k_m"``.

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
from lit_unlearn.quantization.detect import DETECTED_FORMATS, detect_format, on_grid
from lit_unlearn.quantization.fit import describe as describe_layer_schemes
from lit_unlearn.quantization.fit import fit_scheme
from lit_unlearn.quantization.functional import QuantizedTensor, dequantize, fake_quantize, quantize
from lit_unlearn.quantization.gguf_bytes import GGML_TYPE, from_gguf_bytes, gguf_bytes
from lit_unlearn.quantization.gguf_mixture import gguf_fallback_type, gguf_tensor_types, hf_tensor_types
from lit_unlearn.quantization.model import OUTPUT_HEAD_NAMES, default_filter
from lit_unlearn.quantization.schemes import (
    BNB4_BLOCK_SIZES,
    BNB4_DEFAULT_BLOCK_SIZE,
    GGUF_MIXTURES,
    GGUF_SCHEMES,
    RTN_DEFAULT_GROUP_SIZE,
    SCHEMES,
    Scheme,
    get_scheme,
)
from lit_unlearn.quantization.survival import SurvivalStats, survival_stats, survival_stats_delta

__all__ = [
    "BNB4_BLOCK_SIZES",
    "BNB4_DEFAULT_BLOCK_SIZE",
    "DETECTED_FORMATS",
    "FP4_CODE_OF_LEVEL",
    "GGML_TYPE",
    "GGUF_MIXTURES",
    "GGUF_SCHEMES",
    "NF4_LEVELS",
    "OUTPUT_HEAD_NAMES",
    "RTN_DEFAULT_GROUP_SIZE",
    "SCHEMES",
    "QuantizedTensor",
    "Scheme",
    "SurvivalStats",
    "default_filter",
    "dequantize",
    "describe_layer_schemes",
    "detect_format",
    "fake_quantize",
    "fit_scheme",
    "from_gguf_bytes",
    "get_scheme",
    "gguf_bytes",
    "gguf_fallback_type",
    "gguf_tensor_types",
    "hf_tensor_types",
    "on_grid",
    "quantize",
    "survival_stats",
    "survival_stats_delta",
]
