"""bitsandbytes' 4-bit formats (nf4, fp4) as its CUDA kernel stores them (``kQuantizeBlockwise``).

The weight is flattened and cut into blocks of ``block_size`` consecutive elements. For each block the
kernel (bitsandbytes 0.50, ``csrc/kernels.cu``) computes in fp32::

    absmax = max |w|                          # stored as is, fp32
    x      = w * (1 / absmax)                 # every block, the shorter tail block too
    code   = dQuantizeNF4(x) or dQuantizeFP4(x)
    Q(w)   = level[code] * absmax  (fp32), cast to the weight's dtype

**nf4** (``dQuantizeNF4``): a binary tree of ``x > pivot`` tests whose 15 decimal pivots are, in fp32,
exactly the midpoints of consecutive levels, so the code is the number of midpoints strictly below ``x``
(an exact midpoint rounds down), as bitsandbytes' CPU ``bucketize`` computes it too.

**fp4** (``dQuantizeFP4``): sign and magnitude apart. The sign bit is ``x < 0``; ``|x|`` is compared with
seven decimal pivots (``0.00260417f`` … ``0.8333333f``) that are *not* the fp32 level midpoints (up to 14
ulps away), and a magnitude on a pivot takes the smaller magnitude on both sides of zero. So small
negative ``x`` get pattern 8 (decoded ``-0.0``), small positive ``x`` and ``±0`` pattern 0. The kernel is
built with ``--use_fast_math``, which flushes a subnormal ``x`` to a zero of its sign first: ``x`` in
``(-2^-126, 0)`` gets pattern 0. Here that rule is one *threshold* per pair of adjacent levels, ``x >
threshold`` meaning the upper level: ``t`` on the positive side, the float below ``-t`` on the negative
side, and ``-2^-126`` between the two zeros.

bitsandbytes' CPU path (``quantize_4bit`` on a CPU, the version the first implementation matched)
bucketizes fp4 at the signed fp32 midpoints instead and divides the tail block by its absmax: it stores
another fp4 code for weights on or next to a pivot, and swaps the two zero patterns, ``(0, 0.0026]``
getting pattern 8 (see ``docs/bitsandbytes-cpu.md``). On such weights lit-unlearn's codes are the GPU's.
Two GPU details are not modelled: ``1 / absmax`` under fast math may differ from the IEEE reciprocal by
an ulp (:class:`~lit_unlearn.callbacks.PreserveQuantization` keeps a margin for it), and an all-zero block
(``1 / 0``, codes of ``NaN``) decodes to zeros on both, but with absmax ``0`` and nf4 code 0 on a GPU,
where this stores bitsandbytes' CPU floor ``1e-38`` and the code of ``0.0``.

``codes`` here are *level indices* in ascending value order (0 = -1.0 … 15 = +1.0). For nf4 they equal
bitsandbytes' 4-bit codes; for fp4, whose codes are sign/exponent/mantissa bit patterns, bitsandbytes'
code is :data:`FP4_CODE_OF_LEVEL` ``[index]`` (:func:`to_bitsandbytes` packs them as bitsandbytes does).

Finding the level with a search costs ~50 ns per weight on a CPU core. Here a uniform grid over
``[-1, 1]`` of 2048 cells, each holding at most one threshold, turns the search into one table read and
one comparison: ``code = below[cell] + (x > threshold_in[cell])``. The result equals the ladder's for
every input because the cell index is a monotone function of ``x`` computed by the same fp32 operations
for thresholds and weights (see :func:`_cell`). Working codes are then the index
``2 * cell + (x > threshold_in[cell])``, from which every per-code table (value, code, step) is read.
Stored level indices (a reference ``Q(W0)``) are read two per lookup, as 16-bit pairs.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import torch
from torch import Tensor

from lit_unlearn.quantization._chunks import Chunk, Codec, Encoded, Workspace, check_finite
from lit_unlearn.quantization.schemes import Scheme

# bitsandbytes.functional.get_4bit_type("nf4"): quantiles of N(0, 1), QLoRA (arXiv 2305.14314).
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
# bitsandbytes.functional.get_4bit_type("fp4") before its division by 12, listed by bit pattern
# (1 sign, 2 exponent, 1 mantissa bit; pattern 8 is "-0").
_FP4_BY_CODE: tuple[float, ...] = (0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3)
# bitsandbytes' fp4 code of each level index. The two zeros are ordered by the sign the CUDA kernel
# gives them: pattern 8 ("-0") holds small negative x, pattern 0 small positive x and ±0.
FP4_CODE_OF_LEVEL: tuple[int, ...] = (11, 10, 13, 12, 15, 14, 9, 8, 0, 1, 6, 7, 4, 5, 2, 3)
# dQuantizeFP4's magnitude pivots (csrc/kernels.cu), as the compiler rounds the decimal literals to fp32.
FP4_CUDA_PIVOTS: tuple[float, ...] = (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333)

# bitsandbytes guards 1 / absmax with this floor, so all-zero blocks quantize to zeros, not NaN.
_ABSMAX_FLOOR = 1e-38
# Cells per unit of x: 2048 cells over [-1, 1] are 0.00098 wide, narrower than the closest thresholds
# (fp4's ±0.0026 and 0), so no cell holds two thresholds.
_CELLS_PER_UNIT = 1024.0
# One spare cell on each side: x = w * (1 / absmax) can exceed 1 by an ulp (every such x lies beyond
# the outermost thresholds, so it takes the outermost level, as on a GPU).
_CELL_OFFSET = _CELLS_PER_UNIT + 1.0
_N_CELLS = 2 * int(_CELLS_PER_UNIT) + 3
# fp4 has two codes for 0.0 (patterns 8 and 0, levels 7 and 8). For counting code changes by comparing
# values, level 7 gets minus the smallest normal float instead: distinct from 0 (even with denormals
# flushed), and its product with any absmax (< 1e-38) is nothing next to the updates the statistics sum.
_TINY = 2.0**-126
# Two uint8 level indices read as one little-endian int16 index a + 256 b.
_TWO_LEVELS = 15 + 256 * 15 + 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def _fp4_thresholds() -> Tensor:
    """fp32 ``(15,)``: dQuantizeFP4's decision between fp4 levels ``k`` and ``k + 1`` as ``x > threshold``.

    Positive side: ``|x| > pivot`` takes the larger magnitude. Negative side: the larger magnitude is the
    *lower* level and needs ``|x| > pivot``, i.e. ``x < -pivot``; ``x = -pivot`` takes the upper level, so
    the threshold is the float just below ``-pivot``. Zero: fast math flushes ``x`` in ``(-2^-126, 0)`` to
    ``-0.0``, whose sign bit ``x < 0`` leaves unset, so only ``x <= -2^-126`` gets the negative zero.
    """
    pivots = torch.tensor(FP4_CUDA_PIVOTS, dtype=torch.float32)
    negative = torch.nextafter(-pivots, torch.tensor(float("-inf"))).flip(0)
    return torch.cat([negative, torch.tensor([-(2.0**-126)]), pivots])


def _cell(x: Tensor, out: Tensor) -> Tensor:
    """floor(fl(fl(x * 1024) + 1025)) into fp32 ``out``: a monotone map of [-1, 1] onto cells 1…2049.

    Rounding is monotone, so ``x <= b`` implies ``cell(x) <= cell(b)``. Separate ops (no fused
    multiply-add) keep thresholds and weights on identical arithmetic.
    """
    torch.mul(x, _CELLS_PER_UNIT, out=out)
    return out.add_(_CELL_OFFSET).floor_()


def _two_at_once(table: Tensor) -> Tensor:
    """fp64 table whose entry ``a + 256 b`` holds the fp32 pair ``(table[a], table[b])``."""
    index = torch.arange(_TWO_LEVELS)
    pairs = torch.stack([table[index % 256 % 16], table[index // 256 % 16]], dim=1)
    return pairs.contiguous().view(torch.float64).view(-1)


class _Lookup(NamedTuple):
    """Per-code tables, indexed by level (16 entries) or by ``2 * cell + side`` (``2 * _N_CELLS``)."""

    dequant: Tensor  # fp32 level as bitsandbytes decodes it (fp4 pattern 8 is -0.0)
    compare: Tensor  # fp32 level, made distinct per code (see _TINY)
    half_step: Tensor  # fp32 half the local step, in units of absmax
    level: Tensor  # uint8 level index


class _Levels:
    """Level table, decision thresholds and lookup tables of one 4-bit type.

    ``midpoints[k]`` is the CUDA kernel's decision between levels ``k`` and ``k + 1``: ``x > midpoints[k]``
    takes the upper one. For nf4 these are the fp32 level midpoints; for fp4 the kernel's pivots with its
    sign rule (module docstring), which :func:`_fp4_thresholds` writes out.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "nf4":
            levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
            code_of_level = torch.arange(16)
        else:
            by_code = torch.tensor(_FP4_BY_CODE, dtype=torch.float32)
            by_code.div_(by_code.abs().max())  # as get_4bit_type does, in fp32
            code_of_level = torch.tensor(FP4_CODE_OF_LEVEL)
            levels = by_code[code_of_level]
        if not bool((levels[1:] >= levels[:-1]).all()):
            raise RuntimeError(f"{name} levels are not ascending: {levels.tolist()}")
        # nf4: dQuantizeNF4's pivots equal (level[k] + level[k + 1]) / 2 in fp32, bit for bit.
        midpoints = (levels[:-1] + levels[1:]) / 2 if name == "nf4" else _fp4_thresholds()

        dequant = levels.clone()
        compare = levels.clone()
        if name == "fp4":
            # bitsandbytes' CUDA dequantizer decodes fp4 pattern 8 with its sign bit: -0.0 (its torch
            # fallback and AVX-512 CPU kernel give +0.0; see bnb_decode).
            dequant[7] = -0.0
            compare[7] = -_TINY
        if not bool((compare[1:] > compare[:-1]).all()):
            raise RuntimeError(f"{name} comparison levels are not distinct: {compare.tolist()}")

        cells = _cell(midpoints, torch.empty(15)).long()
        if cells.unique().numel() != cells.numel():
            raise RuntimeError(f"{name}: two level thresholds share a lookup cell; use finer cells")
        # Level of the left edge of each cell, and the threshold inside it (+inf where there is none).
        below = torch.searchsorted(cells, torch.arange(_N_CELLS), right=False)
        threshold = torch.full((_N_CELLS,), float("inf"))
        threshold[cells] = midpoints
        level_of_side = torch.stack([below, (below + 1).clamp(max=15)], dim=1).reshape(-1)

        # Local step around a level: the mean distance to its two neighbours, one-sided at ±1. On a
        # uniform grid this is the grid spacing, the s of RTN.
        gaps = levels[1:] - levels[:-1]
        step = torch.empty(16)
        step[1:-1] = (gaps[:-1] + gaps[1:]) / 2
        step[0], step[-1] = gaps[0], gaps[-1]

        by_level = _Lookup(dequant, compare, step / 2, torch.arange(16, dtype=torch.uint8))
        self.by_level = _Lookup(*(t.to(device) for t in by_level))
        self.by_cell_side = _Lookup(*(t[level_of_side].to(device) for t in by_level))
        self.compare_two = _two_at_once(compare).to(device)
        self.half_step_two = _two_at_once(step / 2).to(device)
        self.threshold = threshold.to(device)
        self.midpoints = midpoints.to(device)
        self.code_of_level = code_of_level.to(device=device, dtype=torch.uint8)


_TABLES: dict[tuple[str, torch.device], _Levels] = {}


def levels_for(name: str, device: torch.device | str) -> _Levels:
    key = (name, torch.device(device))
    if key not in _TABLES:
        _TABLES[key] = _Levels(name, key[1])
    return _TABLES[key]


class Bnb4Codec(Codec):
    """nf4 / fp4 blockwise absmax over the flattened weight (any shape; a shorter last block is fine).

    Working codes: int32 ``2 * cell + side`` after :meth:`encode`, the stored uint8 level indices
    after :meth:`load`; ``enc.tables`` says which.
    """

    codes_dtype = torch.uint8

    def __init__(self, scheme: Scheme, device: torch.device) -> None:
        self.block_size = int(scheme.block_size)
        self.tables = levels_for(scheme.name, device)

    def group_len(self, shape: torch.Size) -> int:
        return self.block_size

    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (-(shape.numel() // -self.block_size),)

    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        scaled = ws.get("scaled", torch.float32, chunk)
        absmax = torch.abs(x, out=scaled).amax(dim=1)
        check_finite(absmax, chunk)
        if chunk.tail:
            absmax = absmax.clamp(min=_ABSMAX_FLOOR)  # bitsandbytes' CPU floor, kept in what is stored
        # `1.0 / t` is t.reciprocal() * 1.0 in torch: the kernel's `1.0f / local_abs_max`, for the tail too.
        torch.mul(x, (1.0 / absmax.clamp(min=_ABSMAX_FLOOR))[:, None], out=scaled)

        cell = _cell(scaled, ws.get("cell", torch.float32, chunk))
        cell_index = ws.get("cell_index", torch.int32, chunk).copy_(cell)
        side = ws.get("side", torch.float32, chunk)
        torch.index_select(self.tables.threshold, 0, cell_index.view(-1), out=side.view(-1))
        # 1.0 where x lies above its cell's threshold, else 0.0 (float signs are cheaper than bool masks).
        torch.sub(scaled, side, out=side).sign_().clamp_(min=0.0)
        index = torch.add(side, cell, alpha=2.0, out=cell)
        index = ws.get(slot + ".index", torch.int32, chunk).copy_(index)
        return Encoded(index, absmax, None, self.tables.by_cell_side)

    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        return Encoded(stored, scales, None, self.tables.by_level)

    def store(self, enc: Encoded, out: Tensor) -> None:
        if enc.codes.dtype == torch.uint8:
            out.copy_(enc.codes)
        else:
            torch.index_select(enc.tables.level, 0, enc.codes.view(-1), out=out.view(-1))

    def _lookup(self, table: Tensor, two_at_once: Tensor | None, enc: Encoded, out: Tensor, ws: Workspace,
                chunk: Chunk) -> Tensor:
        codes = enc.codes.reshape(-1)
        n = codes.numel()
        if codes.dtype != torch.uint8:
            torch.index_select(table, 0, codes, out=out.view(-1))
        elif two_at_once is not None and n % 2 == 0 and _LITTLE_ENDIAN:
            # index_select is a serial loop per index: reading two stored levels per index halves it.
            index = ws.flat("two_levels", torch.int32, n // 2).copy_(codes.view(torch.int16))
            torch.index_select(two_at_once, 0, index, out=out.view(-1).view(torch.float64))
        else:
            index = ws.flat("levels", torch.int32, n).copy_(codes)
            torch.index_select(table, 0, index, out=out.view(-1))
        return out

    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        out = ws.get(slot + ".values", torch.float32, chunk)
        return self._lookup(enc.tables.compare, self.tables.compare_two, enc, out, ws, chunk)

    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        return values.mul_(enc.scales[:, None])

    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        # Not two at once: `out` may be a slice of the caller's tensor with no 8-byte alignment.
        codes = enc.codes.reshape(-1)
        if codes.dtype == torch.uint8:
            codes = codes.int()
        torch.index_select(enc.tables.dequant, 0, codes, out=out.view(-1))
        return out.mul_(enc.scales[:, None])

    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        out = ws.get("half_step", torch.float32, chunk)
        self._lookup(enc.tables.half_step, self.tables.half_step_two, enc, out, ws, chunk)
        return out.mul_(enc.scales[:, None])


def to_bitsandbytes(codes: Tensor, scheme: Scheme) -> Tensor:
    """Pack level indices into bitsandbytes' storage: two codes per byte, the first in the high nibble.

    Args:
        codes: uint8 level indices of an nf4/fp4 :class:`QuantizedTensor`, any shape (n elements).
        scheme: its scheme (fp4 level indices are mapped to fp4 bit patterns).

    Returns:
        uint8 tensor of shape ``(ceil(n / 2), 1)``, equal to the first output of
        ``bitsandbytes.functional.quantize_4bit(w, blocksize=..., quant_type=...)`` (an odd count is
        padded with the code of +0.0, as bitsandbytes pads). For fp4, on weights at or next to a
        pivot, and small positive ones, that is what its CUDA kernel stores, not its CPU path.
    """
    tables = levels_for(scheme.name, codes.device)
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        zero_level = torch.searchsorted(tables.midpoints, torch.zeros(1, device=codes.device)).to(torch.uint8)
        flat = torch.cat([flat, zero_level])
    bnb_codes = tables.code_of_level[flat.long()]
    return ((bnb_codes[::2] << 4) | bnb_codes[1::2]).unsqueeze(1)
