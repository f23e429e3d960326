"""LLM.int8's matmul, as bitsandbytes computes a ``load_in_8bit`` layer's forward, in pure torch.

``Linear8bitLt`` (``has_fp16_weights=False``, the inference layout transformers loads) keeps the weight
as int8 codes ``CB`` with one absmax ``SCB`` per output row, and in every forward (bitsandbytes'
``MatMul8bitLt``, on CUDA always, on CPU in eval mode):

1. casts the input ``A`` to fp16 and finds the *outlier columns*: those where any ``|A| ≥ threshold``
   (6.0 by default);
2. quantizes ``A`` row-wise: the outliers set to 0, ``SCA = max |A|`` per row,
   ``CA = round(A · 127 / SCA)`` as int8, and the outlier columns of ``CA`` zeroed (when ``A`` has more
   than one row);
3. multiplies ``CA @ CBᵀ`` exactly in int32 (:func:`int8_product`) and dequantizes: ``out = acc · (SCA ⊗ SCB) · 6.200124e-05``
   (≈ 1/127²) in fp32, plus the bias, cast to ``A``'s dtype;
4. adds the outlier columns back at 16-bit input precision: ``out += A[:, cols] @ (CB[:, cols] · SCB
   / 127)ᵀ`` with the weight columns dequantized to ``A``'s dtype.

:func:`llm_int8_linear` is those four steps in that order. The integer product is exact, as the GPU's int32
matmul is: torch's int8 GEMM on a CPU, else fp32 products over slices of at most 1040 input features
(products ≤ 127², so every partial sum stays below 2²⁴), summed in int32. bitsandbytes' CPU fallback without AVX-512 multiplies in fp32 at any
width, so it is exact only up to 1040 input features.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEQUANT_SCALE", "THRESHOLD", "int8_product", "llm_int8_linear"]

#: bitsandbytes' default outlier threshold (``Linear8bitLt(threshold=6.0)``, transformers'
#: ``llm_int8_threshold``).
THRESHOLD = 6.0
#: bitsandbytes' constant for ``1 / 127²`` in ``int8_mm_dequant``.
DEQUANT_SCALE = 6.200124e-05
_INV_127 = 7.874015718698502e-3  # bitsandbytes' ``int8_vectorwise_dequant``
# Input features whose int8 products fp32 sums exactly: 1040 · 127² < 2^24.
_EXACT_COLUMNS = (1 << 24) // (127 * 127)


def llm_int8_linear(x: Tensor, codes: Tensor, scb: Tensor, bias: Tensor | None = None,
                    threshold: float = THRESHOLD) -> Tensor:
    """``Linear8bitLt``'s forward: ``x`` (…, in) through int8 weight codes (out, in) with row absmax ``scb``.

    Args:
        x: Input activations, any float dtype (they are quantized from fp16, as bitsandbytes does).
        codes: int8 weight codes ``CB``.
        scb: fp32 absmax per output row ``SCB`` (out,).
        bias: Optional bias (out,); cast to ``x``'s dtype as ``Linear8bitLt`` does.
        threshold: Outlier threshold; 0 turns the 16-bit outlier path off.

    Returns:
        Tensor of shape (…, out) in ``x``'s dtype.
    """
    shape = x.shape
    a = x.reshape(-1, shape[-1])
    a16 = a.to(torch.float16)
    cols = None
    if threshold > 0.0:
        outliers = a16.abs() >= threshold
        cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        a16 = a16.masked_fill(outliers, 0.0)
    sca = a16.abs().amax(dim=1).float()
    ca = torch.round(a16 * (127.0 / sca.unsqueeze(-1)))
    ca = torch.nan_to_num(ca, nan=0.0).to(torch.int8)  # an all-zero row (0/0) quantizes to zeros
    if cols is not None and cols.numel() and a.shape[0] > 1:
        ca[:, cols] = 0
    acc = int8_product(ca, codes)
    out = acc * (sca.unsqueeze(-1) * scb.float().reshape(1, -1)) * DEQUANT_SCALE
    if bias is not None:
        out += bias.to(x.dtype)
    out = out.to(x.dtype)
    if cols is not None and cols.numel():
        weight_cols = (codes[:, cols] * scb.float().view(-1, 1) * _INV_127).to(x.dtype).t()
        out = out.addmm(a[:, cols], weight_cols)
    return out.reshape(*shape[:-1], codes.shape[0])


def int8_product(ca: Tensor, codes: Tensor) -> Tensor:
    """``ca @ codesᵀ`` of int8 matrices, exact in int32 (the GPU's ``igemmlt``).

    On a CPU, torch's int8 GEMM (``torch._int_mm``, oneDNN: several times faster than a float product);
    elsewhere, or for fewer than 16 input features (where torch 2.13's CPU kernel returns wrong sums),
    fp32 products over slices of at most 1040 features: ``|products| ≤ 127²``, so fp32 holds every
    partial sum of up to 1040 of them exactly, and the slices are summed in int32.
    """
    width = codes.shape[1]
    if ca.device.type == "cpu" and width >= 16 and hasattr(torch, "_int_mm"):
        return torch._int_mm(ca, codes.t())
    acc = None
    for start in range(0, width, _EXACT_COLUMNS):
        part = slice(start, min(start + _EXACT_COLUMNS, width))
        partial = (ca[:, part].float() @ codes[:, part].float().t()).to(torch.int32)
        acc = partial if acc is None else acc.add_(partial)
    return acc
