"""bitsandbytes' 4-bit formats (nf4, fp4), bit-identical to ``bitsandbytes.functional.quantize_4bit``.

The weight is flattened and cut into blocks of ``block_size`` consecutive elements. For each block
bitsandbytes 0.50 on CPU (the version tested against) computes in fp32::

    absmax = max |w|                         # stored as is, fp32; the tail block stores max(absmax, 1e-38)
    x      = clamp(w * (1 / max(absmax, 1e-38)), -1, 1)   # the shorter tail block divides: w / absmax
    code   = number of level midpoints strictly below x   # torch.bucketize(x, midpoints), right=False
    Q(w)   = level[code] * absmax  (fp32), cast to the weight's dtype, as bitsandbytes' CUDA kernel decodes

so an exact midpoint rounds to the lower level, and an all-zero block gets code "0.0" and absmax 0.
``codes`` here are *level indices* in ascending value order (0 = -1.0 … 15 = +1.0). For nf4 they equal
bitsandbytes' 4-bit codes; for fp4, whose codes are sign/exponent/mantissa bit patterns, bitsandbytes'
code is :data:`FP4_CODE_OF_LEVEL` ``[index]`` (:func:`to_bitsandbytes` packs them as bitsandbytes does).

bitsandbytes finds the level with ``torch.bucketize`` (~50 ns per weight on a CPU core). Here a uniform
grid over ``[-1, 1]`` of 2048 cells, each holding at most one midpoint, turns the search into one table
read and one comparison: ``code = below[cell] + (x > midpoint_in[cell])``. The result equals bucketize's
for every input because the cell index is a monotone function of ``x`` computed by the same fp32
operations for midpoints and weights (see :func:`_cell`). Working codes are then the index
``2 * cell + (x > midpoint_in[cell])``, from which every per-code table (value, code, step) is read.
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
# torch.argsort of that table, which bitsandbytes uses to map a level index back to a code. The two
# zeros tie; torch puts pattern 0 first, so x in (-0.0026, 0] gets code 0 and x in (0, 0.0026] code 8.
FP4_CODE_OF_LEVEL: tuple[int, ...] = (11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3)

# bitsandbytes guards 1 / absmax with this floor, so all-zero blocks quantize to zeros, not NaN.
_ABSMAX_FLOOR = 1e-38
# Cells per unit of x: 2048 cells over [-1, 1] are 0.00098 wide, narrower than the closest midpoints
# (fp4's ±0.0026 and 0), so no cell holds two midpoints.
_CELLS_PER_UNIT = 1024.0
# One spare cell on each side: x = w / absmax can exceed 1 by an ulp (bitsandbytes clamps it; every
# such x lies beyond the outermost midpoints, so the code is the same without clamping).
_CELL_OFFSET = _CELLS_PER_UNIT + 1.0
_N_CELLS = 2 * int(_CELLS_PER_UNIT) + 3
# fp4 has two codes for 0.0 (patterns 0 and 8). For counting code changes by comparing values, level 8
# gets the smallest normal float instead: distinct from 0 (even with denormals flushed), and its
# product with any absmax (< 1e-38) is nothing next to the updates the statistics sum.
_TINY = 2.0**-126
# Two uint8 level indices read as one little-endian int16 index a + 256 b.
_TWO_LEVELS = 15 + 256 * 15 + 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def _cell(x: Tensor, out: Tensor) -> Tensor:
    """floor(fl(fl(x * 1024) + 1025)) into fp32 ``out``: a monotone map of [-1, 1] onto cells 1…2049.

    Rounding is monotone, so ``x <= b`` implies ``cell(x) <= cell(b)``. Separate ops (no fused
    multiply-add) keep midpoints and weights on identical arithmetic.
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
    """Level table, midpoints and lookup tables of one 4-bit type."""

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
        # bitsandbytes: (code[order[:-1]] + code[order[1:]]) / 2, in fp32.
        midpoints = (levels[:-1] + levels[1:]) / 2

        dequant = levels.clone()
        compare = levels.clone()
        if name == "fp4":
            # bitsandbytes' CUDA dequantizer decodes fp4 pattern 8 with its sign bit: -0.0 (its torch
            # fallback and AVX-512 CPU kernel give +0.0; see bnb_decode).
            dequant[8] = -0.0
            compare[8] = _TINY
        if not bool((compare[1:] > compare[:-1]).all()):
            raise RuntimeError(f"{name} comparison levels are not distinct: {compare.tolist()}")

        cells = _cell(midpoints, torch.empty(15)).long()
        if cells.unique().numel() != cells.numel():
            raise RuntimeError(f"{name}: two level midpoints share a lookup cell; use finer cells")
        # Level of the left edge of each cell, and the midpoint inside it (+inf where there is none).
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
            absmax = absmax.clamp(min=_ABSMAX_FLOOR)
            torch.div(x, absmax[:, None], out=scaled)
        else:
            # `1.0 / t` is t.reciprocal() * 1.0 in torch: the same expression as bitsandbytes.
            torch.mul(x, (1.0 / absmax.clamp(min=_ABSMAX_FLOOR))[:, None], out=scaled)

        cell = _cell(scaled, ws.get("cell", torch.float32, chunk))
        cell_index = ws.get("cell_index", torch.int32, chunk).copy_(cell)
        side = ws.get("side", torch.float32, chunk)
        torch.index_select(self.tables.threshold, 0, cell_index.view(-1), out=side.view(-1))
        # 1.0 where x lies above its cell's midpoint, else 0.0 (float signs are cheaper than bool masks).
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
        padded with the code of 0.0, as bitsandbytes pads).
    """
    tables = levels_for(scheme.name, codes.device)
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        zero_level = torch.searchsorted(tables.midpoints, torch.zeros(1, device=codes.device)).to(torch.uint8)
        flat = torch.cat([flat, zero_level])
    bnb_codes = tables.code_of_level[flat.long()]
    return ((bnb_codes[::2] << 4) | bnb_codes[1::2]).unsqueeze(1)
