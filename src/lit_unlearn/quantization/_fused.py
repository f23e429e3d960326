"""Survival statistics of a large weight as compiled CPU kernels.

The eager path of :mod:`~lit_unlearn.quantization.survival` runs ~30 torch operations per chunk, each a
pass over the chunk; on a CPU that caps a check at a few percent of memory bandwidth. Compiled by
``torch.compile``'s C++ backend, the same arithmetic becomes a few loops per chunk (group maxima, then
passes that encode both weights and sum), and nf4/fp4's table lookups become chains of vector
compare-and-select instead of serial gathers: 2-2.5x faster for nf4/fp4 (``benchmarks/``).

The legacy GGUF block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) compile the same way: ggml's reference
quantizer per 32-weight block (fp32 division, ``trunc``, fp16 scales) fused with the statistics, several
times faster than the eager port's ~30 passes. The K-quants stay eager: their per-sub-block least-squares
search is the cost, compiled or not.

Only the CPU uses it: inductor's C++ code keeps IEEE semantics (no fast-math, no FMA contraction, so
``x * (1 / absmax)`` and ``x / s`` round exactly as in eager torch and in bitsandbytes), while GPU
kernels may approximate division. The integer statistics (changed codes, updates below half a step)
equal the eager path's exactly; the sums are taken in fp64, so they are closer to the exact values
than the eager path's fp32 sums (tested). Layers under
:data:`MIN_ELEMENTS` stay eager, where compiling would cost more than it saves, as does nf4/fp4's
shorter last block (a handful of weights whose scale bitsandbytes computes by division).

On a CPU with AVX-512, :mod:`~lit_unlearn.quantization._simd` runs nf4/fp4 (fp32, bf16 and fp16 weights),
the legacy GGUF formats and LLM.int8 (fp32) in place of these kernels, bit-identical and 2-3x faster; the
kernels here serve every other case.

Set ``LIT_UNLEARN_COMPILE=0`` to keep every check eager. Without a working C++ compiler the first
compile fails; the checks then run eagerly and say so once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lit_unlearn.quantization import _simd
from lit_unlearn.quantization._chunks import Chunk, iter_chunks, raise_not_finite
from lit_unlearn.quantization.bnb4 import _ABSMAX_FLOOR, levels_for
from lit_unlearn.quantization.gguf_legacy import LEGACY_OFFSET, LEGACY_QMAX, LEGACY_WITH_MIN
from lit_unlearn.quantization.rtn import _INV_127
from lit_unlearn.quantization.schemes import Scheme

log = logging.getLogger(__name__)

# Weights with fewer elements are checked eagerly: compiling costs seconds once, a small layer's eager
# check microseconds. 2^17 takes SmolLM2-135M's 576-wide projections (331k and 885k weights; 1.8x faster
# checks, benchmarks/results/real_check.md) and leaves the toy world's layers (at most 2^16) eager.
MIN_ELEMENTS = 1 << 17
# Chunks of whole groups. The kernel keeps one chunk-sized fp32 intermediate (inductor splits the fp32
# and fp64 sums into two loops); 2^20 elements (4 MiB) keep it in cache and cost the same as 2^22 or 2^18.
CHUNK_ELEMENTS = 1 << 20
assert CHUNK_ELEMENTS <= 1 << 24  # counts are summed in fp32 per chunk
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Each combination of family, dtypes and inputs is one compiled variant of the same function; a run
# uses a few, the test suite more than torch's default limit of 8.
_RECOMPILE_LIMIT = 64

_state: dict[str, Any] = {"kernel": None, "failed": False}


def enabled() -> bool:
    return os.environ.get("LIT_UNLEARN_COMPILE", "1") != "0" and not _state["failed"]


def applies(scheme: Scheme, w0: Tensor, other: Tensor, numel: int, has_reference: bool) -> bool:
    """Whether a check of this weight runs compiled: CPU, fp32/bf16/fp16, at least :data:`MIN_ELEMENTS`.

    Round-to-nearest checks given a cached ``Q(W0)`` stay eager, which is faster for them than encoding
    ``W0`` again with a division per weight (measured in ``benchmarks/bench_quantization.py``).
    """
    return (
        numel >= MIN_ELEMENTS
        # casts (bf16/fp16) are checked eagerly, and so are the K-quants (a search per sub-block)
        and (scheme.family in ("bnb4", "llm_int8", "rtn") or scheme.name in LEGACY_KERNELS)
        and not (scheme.family == "rtn" and has_reference)
        and w0.device.type == "cpu"
        and w0.dtype in _DTYPES
        and other.dtype in _DTYPES
        and enabled()
    )


def _bnb4_lookup(scaled: Tensor, midpoints: tuple[float, ...], *tables: tuple[float, ...]) -> list[Tensor]:
    """Per-level table entries at the level of each element: the level with ``k`` midpoints below ``x``.

    A chain of compare-and-select over the 15 ascending midpoints (the last midpoint below ``x`` wins),
    which the compiler turns into straight vector code; a table lookup would be a serial gather.
    Equal to bitsandbytes' ``bucketize(x, midpoints)``: ``x > midpoint`` in fp32, ties going down.
    """
    out = [torch.full_like(scaled, table[0]) for table in tables]
    for k, midpoint in enumerate(midpoints, start=1):
        above = scaled > midpoint
        out = [torch.where(above, table[k], o) for table, o in zip(tables, out)]
    return out


#: The legacy GGUF formats whose arithmetic :func:`_encode_legacy` writes out (ggml's signed absmax with an
#: offset, block minimum, and Q8_0's roundf); a format added to the registry without its own branch here
#: is checked eagerly, never with another format's arithmetic.
LEGACY_KERNELS: tuple[str, ...] = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def _inverse(d: Tensor) -> Tensor:
    # ggml's `d ? 1.0f/d : 0.0f`, as gguf_legacy computes it.
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _encode_legacy(x: Tensor, name: str) -> tuple[Tensor, ...]:
    """:func:`~lit_unlearn.quantization.gguf_legacy.quantize_legacy` of 32-weight blocks, as :func:`_encode`
    returns it: ``values`` are the codes less the format's offset, ``scales`` the fp16 ``d``, ``zero_points``
    the fp16 minimum (an offset added after scaling) or ``None``."""
    offset, qmax = LEGACY_OFFSET[name], LEGACY_QMAX[name]
    if name in ("q4_0", "q5_0"):
        amax = x.abs().amax(dim=1, keepdim=True)
        # The element of largest |x|, the first on ties (ggml's scan); +0.0 for a block of zeros. Which of
        # +amax and -amax comes first, from the first position of each: two min-reductions, which vectorise
        # where an argmax and a gather do not.
        position = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        beyond = torch.full_like(x, float(x.shape[1]))
        first_pos = torch.where(x == amax, position, beyond).amin(dim=1, keepdim=True)
        first_neg = torch.where(x == -amax, position, beyond).amin(dim=1, keepdim=True)
        picked = torch.where(first_neg < first_pos, -amax, amax)
        d = torch.where(amax > 0, picked, torch.zeros_like(picked)) / float(-offset)
        codes = torch.trunc(x * _inverse(d) + (offset + 0.5)).clamp(0, 2 * offset - 1)
        scales = d.to(torch.float16).float()
        # Not from d: a NaN block has d = -0.0. Its amax is NaN.
        return codes - offset, scales, None, scales.abs() / 2, ~torch.isfinite(amax)
    if name in LEGACY_WITH_MIN:
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        d = (hi - lo) / float(qmax)
        codes = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp(0, qmax)
        scales = d.to(torch.float16).float()
        # NaN reaches both lo and hi; an overflow of hi - lo or of the fp16 scale alone is no error.
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
        return codes, scales, lo.to(torch.float16).float(), scales.abs() / 2, bad
    amax = x.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    v = x * _inverse(d)
    t = torch.trunc(v)
    codes = torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t) + 0.0  # roundf: ties away from zero
    scales = d.to(torch.float16).float()
    return codes, scales, None, scales.abs() / 2, ~torch.isfinite(amax)


def _encode(x: Tensor, scheme: Scheme, tables: dict[str, tuple[float, ...]]) -> tuple[Tensor, ...]:
    """``(values, scales, zero_points, half_step, not_finite)`` of an fp32 ``(groups, group_len)`` chunk.

    As the eager codecs compute them: ``values`` are distinct per code (nf4/fp4: the comparison
    levels of :mod:`~lit_unlearn.quantization.bnb4`; RTN and int8: the integer codes; GGUF: the codes less
    the offset), ``half_step`` is half the local step at each element (broadcastable), and ``not_finite``
    per group whether the eager codec would refuse it (a non-finite weight).
    """
    if scheme.family == "gguf":
        return _encode_legacy(x, scheme.name)
    if scheme.family == "bnb4":
        absmax = x.abs().amax(dim=1, keepdim=True)
        scaled = x * (1.0 / absmax.clamp(min=_ABSMAX_FLOOR))
        values, half_step = _bnb4_lookup(scaled, tables["midpoints"], tables["compare"], tables["half_step"])
        return values, absmax, None, half_step * absmax, ~torch.isfinite(absmax)
    if scheme.family == "llm_int8":
        x = x.to(torch.float16).float()
        scales = x.abs().amax(dim=1, keepdim=True)
        factor = torch.where(scales > 0, 127.0 / scales, torch.zeros_like(scales))
        return torch.round(x * factor), scales, None, scales * (_INV_127 / 2), ~torch.isfinite(scales)
    qmax = float(scheme.qmax)
    if scheme.symmetric:
        scales = x.abs().amax(dim=1, keepdim=True) / qmax
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        return torch.round(x / safe).clamp(-qmax, qmax), scales, None, scales / 2, ~torch.isfinite(scales)
    lo = x.amin(dim=1, keepdim=True).clamp(max=0.0)
    scales = (x.amax(dim=1, keepdim=True).clamp(min=0.0) - lo) / qmax
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    zero_points = torch.round(-lo / safe).clamp(0, qmax)
    return (torch.round(x / safe) + zero_points).clamp(0, qmax), scales, zero_points, scales / 2, ~torch.isfinite(scales)


def _dequantize(values: Tensor, scales: Tensor, zero_points: Tensor | None, scheme: Scheme) -> Tensor:
    """fp32 ``Q(w)`` from per-element fp32 values, as the eager codec's ``scale``."""
    if scheme.family == "llm_int8":
        return values * scales * _INV_127
    if scheme.family == "gguf":
        q = values * scales
        return q if zero_points is None else q + zero_points
    if zero_points is not None:
        values = values - zero_points
    return values * scales


def _chunk_stats(
    raw0: Tensor, raw_other: Tensor, is_delta: bool, scheme: Scheme, tables: dict[str, tuple[float, ...]]
) -> Tensor:
    """``[changed, below half step, <dQ,ΔW>, ||ΔW||², ||dQ||², ||dQ-ΔW||², non-finite scales]``, fp64."""
    x0 = raw0.float()
    if is_delta:
        # w1 as the in-place merge `weight += delta` stores it: rounded once to w0's dtype.
        raw1 = (x0 + raw_other.float()).to(raw0.dtype)
    else:
        raw1 = raw_other
    x1 = raw1.float()
    d = x1 - x0

    # W0 is encoded again rather than read from cached codes: inside one fused pass that is cheaper
    # than loading and decoding a reference.
    v0, scales0, zp0, half0, bad0 = _encode(x0, scheme, tables)
    v1, scales1, zp1, _, bad1 = _encode(x1, scheme, tables)
    q0 = _dequantize(v0, scales0, zp0, scheme)
    q1 = _dequantize(v1, scales1, zp1, scheme)
    # Q(W) is the dequantized weight in the model's dtype, as deployed.
    if raw0.dtype != torch.float32:
        q0 = q0.to(raw0.dtype).float()
    if raw1.dtype != torch.float32:
        q1 = q1.to(raw1.dtype).float()

    dq = q1 - q0
    residual = dq - d
    nonfinite = bad1.sum() + bad0.sum()
    return torch.stack(
        [
            # Counts as fp32 sums of 0/1 (a quarter faster than int64): exact, as no chunk exceeds 2^24.
            (v1 != v0).float().sum().double(),
            (d.abs() < half0).float().sum().double(),
            (dq * d).double().sum(),
            (d * d).double().sum(),
            (dq * dq).double().sum(),
            (residual * residual).double().sum(),
            nonfinite.double(),
        ]
    )


def _tables(scheme: Scheme) -> dict[str, tuple[float, ...]]:
    """nf4/fp4 levels as Python floats (exact fp32 values), compiled into the kernel as constants."""
    if scheme.family != "bnb4":
        return {}
    levels = levels_for(scheme.name, "cpu")
    return {
        "midpoints": tuple(levels.midpoints.tolist()),
        "compare": tuple(levels.by_level.compare.tolist()),
        "half_step": tuple(levels.by_level.half_step.tolist()),
        "dequant": tuple(levels.by_level.dequant.tolist()),
    }


def _chunk_fake_quantize(raw0: Tensor, delta: Tensor | None, scheme: Scheme, tables: dict[str, tuple[float, ...]]
                         ) -> tuple[Tensor, Tensor]:
    """``(Q(merge(W0, ΔW)) in W0's dtype, non-finite scales)`` of a ``(groups, group_len)`` chunk, decoded as
    the eager codecs decode (nf4/fp4: the dequantization levels, fp4's pattern 8 as ``-0.0``; integer code 0
    as ``+0.0``)."""
    raw1 = raw0 if delta is None else (raw0.float() + delta.float()).to(raw0.dtype)
    x = raw1.float()
    if scheme.family == "bnb4":
        absmax = x.abs().amax(dim=1, keepdim=True)
        scaled = x * (1.0 / absmax.clamp(min=_ABSMAX_FLOOR))
        (levels,) = _bnb4_lookup(scaled, tables["midpoints"], tables["dequant"])
        q = levels * absmax
        bad = ~torch.isfinite(absmax)
    else:
        values, scales, zero_points, _, bad = _encode(x, scheme, tables)
        q = _dequantize(values, scales, zero_points, scheme)
        if zero_points is None and scheme.family != "gguf":
            # A stored integer code 0 decodes to +0.0, where rounding left -0.0. GGUF's values are exact
            # (code less offset) and ggml's `value * d` keeps the sign of a negative Q4_0/Q5_0 scale.
            q = q + 0.0
    return q.to(raw0.dtype), bad.sum()


def fake_quantize_merged(w0: Tensor, delta: Tensor | None, scheme: Scheme, group_len: int) -> Tensor | None:
    """``fake_quantize(merge(w0, delta), scheme)`` by a compiled kernel, chunk by chunk; ``None`` where it does
    not apply (LLM.int8, the K-quants, another device, a shorter last group, a failed compile): the caller
    then runs eagerly. nf4/fp4, the integer RTN schemes and GGUF's legacy block formats apply.

    ``scheme`` is already fitted to the weight's shape; ``group_len`` is its codec's. Equal to the eager path
    bit for bit (tested). Raises ``ValueError`` for non-finite weights, as the eager path.
    """
    if not (
        (scheme.family in ("bnb4", "rtn") or scheme.name in LEGACY_KERNELS)
        and w0.device.type == "cpu"
        and w0.dtype in _DTYPES
        and (delta is None or (delta.dtype in _DTYPES and delta.shape == w0.shape))
        and w0.numel() % group_len == 0
        and enabled()
    ):
        return None
    import torch._dynamo

    flat0 = w0.detach().reshape(-1)
    flat_delta = None if delta is None else delta.detach().reshape(-1)
    if scheme.family == "bnb4" and _simd.applies((flat0, flat_delta), group_len):
        q, bad = _simd.fake(flat0, flat_delta, _tables(scheme), group_len, _ABSMAX_FLOOR)
    elif scheme.name in _simd.LEGACY and group_len == 32 and _simd.applies((flat0, flat_delta), group_len):
        q, bad = _simd.legacy_fake(flat0, flat_delta, scheme.name)
    else:
        q, bad = None, -1
    if q is not None:
        if bad >= 0:
            raise_not_finite(_group(bad, group_len))
        return q.view(w0.shape)
    chunks = list(iter_chunks(flat0.numel(), group_len, CHUNK_ELEMENTS))
    out = None if len(chunks) == 1 else torch.empty(w0.shape, dtype=w0.dtype)
    kernel, tables = _fake_kernel(), _tables(scheme)
    try:
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, specialize_float=True):
            for chunk in chunks:
                part, shape = slice(chunk.start, chunk.stop), (chunk.groups, group_len)
                other = None if flat_delta is None else flat_delta[part].view(shape)
                q, nonfinite = kernel(flat0[part].view(shape), other, scheme, tables)
                if nonfinite > 0:
                    raise_not_finite(chunk)
                if out is None:
                    return q.view(w0.shape)  # one chunk: the kernel's output is the weight, no copy
                out.view(-1)[part].copy_(q.view(-1))
    except Exception as error:
        if not _is_compile_failure(error):
            raise
        _compile_failed(error)
        return None
    return out


def _fake_kernel() -> Callable[..., tuple[Tensor, Tensor]]:
    if _state.get("fake_kernel") is None:
        _state["fake_kernel"] = torch.compile(
            _chunk_fake_quantize, dynamic=True, options={"emulate_precision_casts": True}
        )
    return _state["fake_kernel"]


def _kernel() -> Callable[..., Tensor]:
    if _state["kernel"] is None:
        log.info(
            "Compiling the survival check for large layers (seconds, once per scheme and dtype; torch caches "
            "the kernels on disk). LIT_UNLEARN_COMPILE=0 skips it."
        )
        # fp16/bf16 round trips (`.to(bf16).float()`) are part of the format; keep them in fused code.
        options = {"emulate_precision_casts": True}
        _state["kernel"] = torch.compile(_chunk_stats, dynamic=True, options=options)
    return _state["kernel"]


def survival_sums(
    flat0: Tensor, flat_other: Tensor, is_delta: bool, scheme: Scheme, group_len: int
) -> tuple[Tensor, int] | None:
    """The fp64 statistics of the weight's whole groups and how many elements they cover.

    ``None`` after a failed compile: the caller then checks eagerly. A shorter last group is left to the
    caller. Raises ``ValueError`` for non-finite weights, as the eager path.
    """
    import torch._dynamo

    groups = flat0.numel() // group_len
    if scheme.family == "bnb4" and _simd.applies((flat0, flat_other), group_len, dtypes=tuple(_simd.KINDS)):
        sums, bad = _simd.stats(flat0, flat_other, is_delta, _tables(scheme), groups, group_len, _ABSMAX_FLOOR)
    elif scheme.name in _simd.LEGACY and group_len == 32 and _simd.applies((flat0, flat_other), group_len):
        sums, bad = _simd.legacy_stats(flat0, flat_other, is_delta, scheme.name, groups)
    elif scheme.family == "llm_int8" and _simd.applies((flat0, flat_other), group_len, max_group=1 << 24):
        sums, bad = _simd.int8_stats(flat0, flat_other, is_delta, groups, group_len, _INV_127, _INV_127 / 2)
    else:
        sums, bad = None, -1
    if sums is not None:
        if bad >= 0:
            raise_not_finite(_group(bad, group_len))
        return sums, groups * group_len
    totals = torch.zeros(7, dtype=torch.float64)
    kernel, tables = _kernel(), _tables(scheme)
    try:
        # Float arguments (the nf4/fp4 levels) become constants of the kernel, not inputs.
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, specialize_float=True):
            for chunk in iter_chunks(groups * group_len, group_len, CHUNK_ELEMENTS):
                part, shape = slice(chunk.start, chunk.stop), (chunk.groups, group_len)
                sums = kernel(flat0[part].view(shape), flat_other[part].view(shape), is_delta, scheme, tables)
                if sums[6] > 0:
                    raise_not_finite(chunk)
                totals += sums
    except Exception as error:
        if not _is_compile_failure(error):
            raise
        _compile_failed(error)
        return None
    return totals[:6], groups * group_len


def _group(index: int, group_len: int) -> Chunk:
    return Chunk(index * group_len, (index + 1) * group_len, index, 1, group_len, False)


def _compile_failed(error: Exception) -> None:
    _state["failed"] = True
    log.warning(
        "Compiling the survival check failed (%s: %s); checks run eagerly, several times slower. Install "
        "a C++ compiler (gcc or clang) to compile them, or set LIT_UNLEARN_COMPILE=0 to skip trying.",
        type(error).__name__,
        str(error).splitlines()[0] if str(error) else "",
    )


def _is_compile_failure(error: Exception) -> bool:
    import torch._dynamo.exc
    import torch._inductor.exc

    failures = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError, OSError)
    return isinstance(error, failures)
