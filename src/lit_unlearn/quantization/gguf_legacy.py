"""llama.cpp's legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) as ggml's reference quantizers compute them.

A torch port of ``quantize_row_q*_ref`` in ggml ``src/ggml-quants.c``, vectorised over blocks of 32
consecutive weights of a row. Every operation is the fp32 operation the C code performs, in the same order
(ggml's CPU-independent ``ggml-base`` is built without FMA contraction), so codes and fp16 scales are bit
for bit what ``ggml_quantize_chunk`` writes (tested against the library)::

    Q4_0  d = m / -8,   m the element of largest |x| (the first on ties)   q = min(15, trunc(x·(1/d) + 8.5))
    Q5_0  d = m / -16                                                      q = min(31, trunc(x·(1/d) + 16.5))
    Q4_1  d = (max - min) / 15                                             q = min(15, trunc((x - min)·(1/d) + 0.5))
    Q5_1  d = (max - min) / 31                                             q = trunc((x - min)·(1/d) + 0.5)
    Q8_0  d = max|x| / 127                                                 q = roundf(x·(1/d))  (ties away from 0)

``1/d`` is taken from the unrounded fp32 ``d`` (0 for a zero block); ``d`` (and ``min``) are then stored
as fp16. Decoded values, as ggml's ``dequantize_row_*`` and ``gguf.quants.dequantize`` compute them:
``(q - 8)·d``, ``(q - 16)·d``, ``q·d + min``, ``q·d`` (Q8_0 codes are signed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: Weights per block of every legacy format.
QK_LEGACY = 32

#: Code offset subtracted before scaling (Q4_0, Q5_0 store ``q + 8`` / ``q + 16``), and the top code.
LEGACY_OFFSET = {"q4_0": 8, "q5_0": 16, "q4_1": 0, "q5_1": 0, "q8_0": 0}
LEGACY_QMAX = {"q4_0": 15, "q5_0": 31, "q4_1": 15, "q5_1": 31, "q8_0": 127}
#: Formats with a per-block minimum (``value = q·d + min``).
LEGACY_WITH_MIN = ("q4_1", "q5_1")


class LegacyBlocks(NamedTuple):
    """One legacy-format quantization of ``(blocks, 32)`` weights.

    ``codes``: fp32 integer values as stored (Q4_0 0…15, Q5_0/Q5_1 0…31, Q4_1 0…15, Q8_0 -127…127);
    ``d``: ``(blocks,)`` the fp16 scale as fp32 (negative for Q4_0/Q5_0 when the largest weight is
    positive); ``m``: ``(blocks,)`` the fp16 minimum as fp32 for Q4_1/Q5_1, else ``None``; ``finite``:
    ``(blocks,)`` bool, whether every weight of the block is finite, where the quantizer's own block
    reductions tell it (Q4_1/Q5_1: min and max; Q8_0: max ``|x|``; NaN reaches both), else ``None``.
    """

    codes: Tensor
    d: Tensor
    m: Tensor | None
    finite: Tensor | None = None


def _to_fp16_value(x: Tensor) -> Tensor:
    # GGML_FP32_TO_FP16 rounds to nearest, ties to even, as torch's cast does.
    return x.to(torch.float16).to(torch.float32)


def _inverse(d: Tensor) -> Tensor:
    # `const float id = d ? 1.0f/d : 0.0f;` (-0.0 counts as zero too).
    # torch's `1.0 / t` multiplies by a reciprocal; ggml divides.
    ones = torch.ones_like(d)
    return torch.where(d != 0, ones.div(torch.where(d != 0, d, ones)), torch.zeros_like(d))


def signed_absmax(x: Tensor) -> Tensor:
    """Per row the element of largest ``|x|``, the first on ties; ``+0.0`` for a row of zeros.

    ggml scans with ``if (amax < fabsf(v))`` from ``max = 0.0f``, so a row of (signed) zeros keeps
    ``+0.0`` and Q4_0's ``d = max / -8`` becomes ``-0.0``.
    """
    absx = x.abs()
    amax, idx = absx.max(dim=1)
    picked = x.gather(1, idx[:, None]).squeeze(1)
    return torch.where(amax > 0, picked, torch.zeros_like(picked))


def _round_half_away(v: Tensor) -> Tensor:
    # C's roundf: ties away from zero (torch.round ties to even). `v - trunc(v)` is exact in fp32.
    t = torch.trunc(v)
    frac = v - t
    return torch.where(frac.abs() >= 0.5, t + torch.sign(v), t)


def quantize_legacy(x: Tensor, name: str) -> LegacyBlocks:
    """``quantize_row_<name>_ref`` on ``x``: fp32 ``(blocks, 32)``, each row one ggml block."""
    if name in ("q4_0", "q5_0"):
        offset = LEGACY_OFFSET[name]
        d = signed_absmax(x) / float(-offset)
        scaled = x * _inverse(d)[:, None]
        codes = torch.trunc(scaled + (offset + 0.5)).clamp_(0, 2 * offset - 1)
        return LegacyBlocks(codes, _to_fp16_value(d), None)
    if name in LEGACY_WITH_MIN:
        lo, hi = x.amin(dim=1), x.amax(dim=1)
        d = (hi - lo) / float(LEGACY_QMAX[name])
        scaled = (x - lo[:, None]) * _inverse(d)[:, None]
        # Q4_1 clamps with MIN(15, ...); Q5_1 casts to uint8 without a clamp, and (x - min)/d never passes 31.5.
        codes = torch.trunc(scaled + 0.5).clamp_(0, LEGACY_QMAX[name])
        return LegacyBlocks(codes, _to_fp16_value(d), _to_fp16_value(lo), torch.isfinite(lo) & torch.isfinite(hi))
    if name == "q8_0":
        amax = x.abs().amax(dim=1)
        d = amax / 127.0
        # + 0.0: a stored int8 0 decodes to +0.0, where trunc left -0.0 for small negatives.
        codes = _round_half_away(x * _inverse(d)[:, None]).add_(0.0)
        return LegacyBlocks(codes, _to_fp16_value(d), None, torch.isfinite(amax))
    raise ValueError(f"{name!r} is not a legacy GGUF format; choose one of 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0'.")


def dequantize_legacy(codes: Tensor, d: Tensor, m: Tensor | None, name: str) -> Tensor:
    """ggml's ``dequantize_row_<name>``: fp32 ``(blocks, 32)`` from stored codes, ``d`` and ``m``."""
    values = codes - LEGACY_OFFSET[name] if LEGACY_OFFSET[name] else codes
    out = values * d[:, None]
    return out + m[:, None] if m is not None else out
