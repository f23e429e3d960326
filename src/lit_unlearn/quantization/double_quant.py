"""Survival statistics of a double-quantized 4-bit base (QLoRA's ``bnb_4bit_use_double_quant``).

With double quantization bitsandbytes stores each block's absmax in 8 bits too: ``absmax - mean(absmax)``
quantized blockwise (256 scales a block) with its dynamic 8-bit code. Re-quantizing a weight, as peft's
4-bit merge does, computes those nested scales afresh, from the new absmax *and their new mean*, so even
the decoded base re-quantized with no update at all decodes to other values (most of them, by about an
8-bit step of its block's scale) while its 4-bit codes stay put. A check that compares the merge with
the stored base would therefore report a change that no update made. Here both sides are deployed the
same way: ``Q(W) = requantize(W)`` for the original ``W0`` and for ``W0 + ΔW`` alike, with the codes and
nested scales bitsandbytes writes, so ``ΔW = 0`` reads as no change in every statistic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.quantization.bnb4 import FP4_CODE_OF_LEVEL, levels_for
from lit_unlearn.quantization.bnb_decode import block_scales, dequantize_4bit_as_cuda
from lit_unlearn.quantization.survival import SurvivalStats

__all__ = ["DoubleQuantized", "double_quant_survival", "requantize_double_quant"]


class DoubleQuantized:
    """A weight as bitsandbytes double-quantizes it: 4-bit codes, decoded nested scales and values.

    Attributes:
        levels: int64 level indices (ascending value order, as :mod:`~lit_unlearn.quantization.bnb4`),
            shape ``(n,)``.
        scales: fp32 ``(blocks,)``: each block's absmax as the nested 8-bit code decodes it.
        values: The decoded weight, shape and dtype of the quantized weight.
    """

    def __init__(self, levels: Tensor, scales: Tensor, values: Tensor) -> None:
        self.levels, self.scales, self.values = levels, scales, values


@torch.no_grad()
def requantize_double_quant(weight: Tensor, quant_type: str, block_size: int) -> DoubleQuantized:
    """``weight`` quantized by bitsandbytes with double quantization (``compress_statistics=True``), as
    ``Params4bit`` and peft's 4-bit merge quantize it, and decoded as the CUDA kernel decodes it."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(
        weight.contiguous(), blocksize=block_size, compress_statistics=True, quant_type=quant_type
    )
    scales = block_scales(state)
    values = dequantize_4bit_as_cuda(packed, scales, quant_type, block_size, weight.shape, weight.dtype)
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[: weight.numel()].long()
    if quant_type == "fp4":
        level_of_code = torch.empty(16, dtype=torch.long)
        level_of_code[torch.tensor(FP4_CODE_OF_LEVEL)] = torch.arange(16)
        codes = level_of_code.to(codes.device)[codes]
    return DoubleQuantized(codes, scales, values)


@torch.no_grad()
def double_quant_survival(w0: Tensor, w1: Tensor, quant_type: str, block_size: int) -> SurvivalStats:
    """:func:`~lit_unlearn.quantization.survival_stats` of ``w0`` and ``w1`` under double quantization.

    ``changed`` counts 4-bit codes that differ; ``dQ`` is the difference of the two decoded weights
    (nested scales included); the half step is ``W0``'s level step times its decoded block scale.
    Materialises both decoded weights (this path serves 4-bit bases, whose layers are decoded anyway).
    """
    q0 = requantize_double_quant(w0, quant_type, block_size)
    q1 = requantize_double_quant(w1, quant_type, block_size)
    n = w0.numel()
    d = (w1.float() - w0.float()).reshape(-1)
    dq = (q1.values.float() - q0.values.float()).reshape(-1)
    half_step = levels_for(quant_type, w0.device).by_level.half_step[q0.levels]
    half_step = half_step * q0.scales.repeat_interleave(block_size)[:n]
    residual = dq - d
    return SurvivalStats(
        numel=n,
        n_changed=int((q1.levels != q0.levels).sum()),
        n_below_half_step=int((d.abs() < half_step).sum()),
        dot=float(torch.dot(dq.double(), d.double())),
        delta_sq=float(torch.dot(d.double(), d.double())),
        qdelta_sq=float(torch.dot(dq.double(), dq.double())),
        residual_sq=float(torch.dot(residual.double(), residual.double())),
    )
