"""llama.cpp's K-quants (Q4_K, Q5_K, Q6_K) as ggml's reference quantizers compute them.

A torch port of ``quantize_row_q4_K_ref``, ``quantize_row_q5_K_ref`` and ``quantize_row_q6_K_ref`` (ggml
``src/ggml-quants.c``, no importance matrix), vectorised over super-blocks of 256 weights of a row:

* Q4_K / Q5_K: 8 sub-blocks of 32. Each gets a scale and a min from ``make_qkx2_quants`` (a weighted
  least-squares search over 21 / 16 candidate grids, weights ``sqrt(mean x²) + |x|``); the 8 scales and
  8 mins are quantized to 6 bits against fp16 super-block scales ``d = max_scale / 63`` and
  ``dmin = max_min / 63``; the codes are then recomputed from the stored values:
  ``q = clamp(nearest_int((x + dmin·m_j) / (d·sc_j)), 0, 15 | 31)``. Value ``d·sc_j · q - dmin·m_j``.
* Q6_K: 16 sub-blocks of 16, each a signed scale from ``make_qx_quants`` (19 candidate grids, weights
  ``x²``); the 16 scales quantized to int8 against ``d = max_scale / -128``; codes
  ``clamp(nearest_int(x / (d·sc_j)), -32, 31) + 32``. Value ``d·sc_j · (q - 32)``.

Bit-exactness needs the C code's order of fp32 operations: every sum over a sub-block is accumulated
left to right (:func:`_seqsum`; a torch reduction would sum pairwise), and ``nearest_int`` (the
``x + 1.5·2^23`` trick) rounds half to even like ``torch.round``. A sub-block whose stored scale is 0 keeps
the codes of the search, as the C code does (they decode to ``-dmin·m_j`` or 0 whatever they are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lit_unlearn.quantization import _simd

#: Weights per super-block.
QK_K = 256
#: ggml's GROUP_MAX_EPS: below this, a Q6_K sub-block (and super-block) counts as all zero.
_GROUP_MAX_EPS = float(np.float32(1e-15))
_F32 = np.float32


class KBlocks(NamedTuple):
    """One K-quant quantization of ``(superblocks, 256)`` weights.

    ``codes``: fp32 ``(superblocks, 256)``, the stored codes (Q4_K 0…15, Q5_K 0…31, Q6_K 0…63).
    ``d``: ``(superblocks,)`` fp16 super-block scale as fp32. ``dmin``: the same for the mins (Q4_K/Q5_K;
    ``None`` for Q6_K). ``sc``: ``(superblocks, 8 | 16)`` integer sub-block scales (0…63, or -128…127 for
    Q6_K) as fp32; ``m``: the 6-bit mins (Q4_K/Q5_K) or ``None``.
    """

    codes: Tensor
    d: Tensor
    dmin: Tensor | None
    sc: Tensor
    m: Tensor | None

    def sub_scales(self) -> Tensor:
        """``d·sc_j`` per sub-block, ``(superblocks, subblocks)`` fp32 (exact: 11 by 8 significant bits)."""
        return self.d[:, None] * self.sc

    def sub_mins(self) -> Tensor | None:
        """``dmin·m_j`` per sub-block, or ``None`` for Q6_K."""
        return None if self.dmin is None else self.dmin[:, None] * self.m


def _seqsum(terms: Tensor) -> Tensor:
    """Sum over dim 0 left to right in fp32, as a C loop ``s += t[i]`` from ``s = 0`` does."""
    acc = torch.zeros_like(terms[0])
    for row in terms:
        acc += row
    return acc


def _rdiv(numerator: float, t: Tensor) -> Tensor:
    """``numerator / t`` as one IEEE fp32 division (torch's ``float / Tensor`` multiplies by a reciprocal)."""
    return torch.full_like(t, numerator).div_(t)


def _fp16_value(x: Tensor) -> Tensor:
    return x.to(torch.float16).to(torch.float32)


def _nearest_int(x: Tensor) -> Tensor:
    # `fval + 12582912.f` keeps the integer part with ties to even, for |fval| < 2^22.
    return torch.round(x)


def _make_qkx2_quants(x: Tensor, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[Tensor, Tensor, Tensor]:
    """``make_qkx2_quants`` for every sub-block at once; ``x`` is ``(32, subblocks)`` (one column each).

    Returns ``(scale, the_min, L)``: ``(subblocks,)``, ``(subblocks,)`` (``-min >= 0``) and ``(32, subblocks)``.
    """
    sum_x2 = _seqsum(x * x)
    # sqrtf is correctly rounded; torch's fp32 sqrt is not always (1 ulp off seen on CPU). A float64 root
    # rounded once to fp32 is the correctly rounded fp32 root (53 >= 2·24 + 2 bits).
    av_x = torch.sqrt((sum_x2 / 32.0).double()).float()
    w = av_x + x.abs()
    lo = x.amin(dim=0).clamp(max=0.0)  # `if (min > 0) min = 0;`
    hi = x.amax(dim=0)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    span = hi - lo
    flat = hi == lo
    safe_span = torch.where(flat, torch.ones_like(span), span)
    xs = x - lo

    iscale = _rdiv(float(nmax), safe_span)
    scale = _rdiv(1.0, iscale)
    levels = _nearest_int(iscale * xs).clamp_(0, nmax)
    diff = scale * levels + lo - x
    best_error = _seqsum(w * (diff * diff))
    best_min = lo.clone()
    for step in range(nstep + 1):
        # The C loop updates `min` when a grid wins, and later grids start from that min: `x - min`
        # and `max - min` are recomputed every step.
        if step:
            xs = x - best_min
            safe_span = torch.where(flat, torch.ones_like(span), hi - best_min)
        numerator = float(_F32(rmin) + _F32(rdelta) * _F32(step) + _F32(nmax))
        trial = _nearest_int(_rdiv(numerator, safe_span) * xs).clamp_(0, nmax)
        wl = w * trial
        sum_l = _seqsum(wl)
        sum_l2 = _seqsum(wl * trial)
        sum_xl = _seqsum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe_det = torch.where(ok, det, torch.ones_like(det))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_det
        positive = this_min > 0
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        d2 = this_scale * trial + this_min - x
        cur_error = _seqsum(w * (d2 * d2))
        better = ok & (cur_error < best_error)
        levels = torch.where(better, trial, levels)
        best_error = torch.where(better, cur_error, best_error)
        scale = torch.where(better, this_scale, scale)
        best_min = torch.where(better, this_min, best_min)
    # A constant sub-block (max == min after clamping) returns before any search: L = 0, scale 0.
    levels = torch.where(flat, torch.zeros_like(levels), levels)
    best_min = torch.where(flat, lo, best_min)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return scale, -best_min, levels


def _positive_max(t: Tensor) -> Tensor:
    peak = t.amax(dim=1)
    return torch.where(peak > 0, peak, torch.zeros_like(peak))


def _quantize_q45_k(x: Tensor, nmax: int, rmin: float, nstep: int) -> KBlocks:
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32).t().contiguous()  # (32, subblocks): one contiguous row per position
    scales, mins, levels = _make_qkx2_quants(sub, nmax, rmin, 0.1, nstep)
    scales, mins = scales.view(nb, 8), mins.view(nb, 8)
    # `if (scale > max_scale) max_scale = scale;` from 0: a -0.0 never replaces the initial +0.0.
    max_scale = _positive_max(scales)
    max_min = _positive_max(mins)
    inv_scale = torch.where(max_scale > 0, _rdiv(63.0, torch.where(max_scale > 0, max_scale, 1.0)), 0.0)
    inv_min = torch.where(max_min > 0, _rdiv(63.0, torch.where(max_min > 0, max_min, 1.0)), 0.0)
    # `uint8_t ls = nearest_int(...)` wraps modulo 256 before MIN(63, ls).
    sc = torch.remainder(_nearest_int(inv_scale[:, None] * scales), 256).clamp_(max=63)
    # + 0.0: a zero min (-0.0 after the search negates it) is the stored integer 0.
    m = torch.remainder(_nearest_int(inv_min[:, None] * mins), 256).clamp_(max=63).add_(0.0)
    d = _fp16_value(max_scale / 63.0)
    dmin = _fp16_value(max_min / 63.0)

    d1 = (d[:, None] * sc).reshape(-1)  # (subblocks,)
    dm = (dmin[:, None] * m).reshape(-1)
    has_scale = d1 != 0
    safe_d1 = torch.where(has_scale, d1, torch.ones_like(d1))
    recomputed = _nearest_int((sub + dm) / safe_d1).clamp_(0, nmax)
    # + 0.0: round() leaves -0.0 for small negatives; a stored code 0 decodes from +0.0.
    codes = torch.where(has_scale, recomputed, levels).add_(0.0)
    return KBlocks(codes.t().reshape(nb, QK_K), d, dmin, sc, m)


def quantize_q4_k(x: Tensor) -> KBlocks:
    """``quantize_row_q4_K_ref`` on fp32 ``(superblocks, 256)``."""
    return _quantize_q45_k(x, 15, -1.0, 20)


def quantize_q5_k(x: Tensor) -> KBlocks:
    """``quantize_row_q5_K_ref`` on fp32 ``(superblocks, 256)``."""
    return _quantize_q45_k(x, 31, -0.5, 15)


def _make_qx_quants(x: Tensor, nmax: int) -> tuple[Tensor, Tensor]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)`` per column of ``x`` ``(16, subblocks)``.

    Returns ``(scale, L)`` with ``L`` in ``0 … 2·nmax - 1`` (0 for an all-zero sub-block).
    """
    absx = x.abs()
    amax, idx = absx.max(dim=0)
    peak = x.gather(0, idx[None]).squeeze(0)
    zero = amax < _GROUP_MAX_EPS
    safe_peak = torch.where(zero, torch.ones_like(peak), peak)
    w = x * x
    wx = w * x

    def trial(iscale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        levels = _nearest_int(iscale * x).clamp_(-nmax, nmax - 1)
        return levels, _seqsum(wx * levels), _seqsum(w * levels * levels)

    levels, sumlx, suml2 = trial(_rdiv(float(-nmax), safe_peak))
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        numerator = float(-(_F32(nmax) + _F32(0.1) * _F32(step)))
        cand, sumlx, suml2 = trial(_rdiv(numerator, safe_peak))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        levels = torch.where(better, cand, levels)
        scale = torch.where(better, sumlx / torch.where(better, suml2, 1.0), scale)
        best = torch.where(better, scale * sumlx, best)
    codes = torch.where(zero, torch.zeros_like(levels), levels + nmax)
    return torch.where(zero, torch.zeros_like(scale), scale), codes


def quantize_q6_k(x: Tensor) -> KBlocks:
    """``quantize_row_q6_K_ref`` on fp32 ``(superblocks, 256)``."""
    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16).t().contiguous()
    scales, levels = _make_qx_quants(sub, 32)
    scales = scales.view(nb, 16)
    abs_scales = scales.abs()
    max_abs, idx = abs_scales.max(dim=1)
    max_scale = torch.where(max_abs > 0, scales.gather(1, idx[:, None]).squeeze(1), 0.0)
    zero_block = max_abs < _GROUP_MAX_EPS
    safe_max = torch.where(zero_block, torch.ones_like(max_scale), max_scale)
    iscale = _rdiv(-128.0, safe_max)
    d = torch.where(zero_block, 0.0, _fp16_value(_rdiv(1.0, iscale)))
    sc = _nearest_int(iscale[:, None] * scales).clamp_(max=127)
    sc = torch.where(zero_block[:, None], 0.0, sc)

    d1 = (d[:, None] * sc).reshape(-1)
    has_scale = d1 != 0
    safe_d1 = torch.where(has_scale, d1, torch.ones_like(d1))
    recomputed = _nearest_int(sub / safe_d1).clamp_(-32, 31) + 32
    codes = torch.where(has_scale, recomputed, levels)
    # An all-zero super-block is written as zero bytes: codes 0.
    codes = torch.where(zero_block.repeat_interleave(16)[None], 0.0, codes)
    return KBlocks(codes.t().reshape(nb, QK_K), d, None, sc, None)


def _dispatched(name: str, port: Callable[[Tensor], KBlocks]) -> Callable[[Tensor], KBlocks]:
    """``name``'s quantizer: ggml's C transcribed (:func:`~lit_unlearn.quantization._simd.kquant`, bit-identical
    and 20-30x faster) where the C kernels load, else the torch port."""

    def quantize_k(x: Tensor) -> KBlocks:
        if _simd.kquant_applies(x):
            return KBlocks(*_simd.kquant(name, x))
        return port(x)

    quantize_k.__name__ = quantize_k.__qualname__ = f"quantize_{name}"
    return quantize_k


#: The K-quant quantizers by name, as every caller reaches them.
KQUANTIZERS = {name: _dispatched(name, port)
               for name, port in (("q4_k", quantize_q4_k), ("q5_k", quantize_q5_k), ("q6_k", quantize_q6_k))}
#: Weights per stored scale: Q4_K / Q5_K sub-blocks of 32, Q6_K of 16.
K_SUBBLOCK = {"q4_k": 32, "q5_k": 32, "q6_k": 16}
K_QMAX = {"q4_k": 15, "q5_k": 31, "q6_k": 63}
