"""Survival checks, deployed weights and 4-bit decodes by AVX-512 kernels in C (``_simd.c``).

nf4/fp4 statistics (fp32, bf16 and fp16 weights) and deployed weights (fp32); GGUF's legacy formats
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: statistics and deployed weights, fp32); LLM.int8's statistics (fp32);
bitsandbytes' 4-bit decode of a QLoRA base (to fp32, bf16 or fp16); and GGUF's K-quant quantizers (Q4_K, Q5_K,
Q6_K: ggml's reference search, one sub-block per vector lane).

The compiled kernels of :mod:`~lit_unlearn.quantization._fused` look a weight's 4-bit level up by a chain
of 15 compare-and-select steps per table, which bounds an nf4 check at about 6% of an fp32 copy
(``benchmarks/results/lookup.md``). On a CPU with AVX-512 the same arithmetic runs here with the level
index from a four-step binary search and each table read by one register permute: codes and deployed
weights bit-identical to the compiled kernels, the fp64 sums of the same fp32 products added in another
order.

Built once per machine with the system's C compiler (``$CC``, else ``cc``; a second or less) into
``$LIT_UNLEARN_CACHE`` (default ``~/.cache/lit_unlearn``) and loaded with ``ctypes``. Used only where torch
reports AVX-512 (:func:`torch.backends.cpu.get_cpu_capability`), for groups of a multiple of 16 (4-bit
blocks up to 4096); everything else, ``LIT_UNLEARN_SIMD=0`` and ``LIT_UNLEARN_COMPILE=0`` keep the
compiled (or eager) path. A failed build says so once and falls back.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_simd.c")
FLAGS = ("-O2", "-std=c11", "-mavx512f", "-mf16c", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
MAX_GROUP = 4096  # a group's merged weights live on the C stack

_state: dict[str, Any] = {"lib": None, "failed": False}


def enabled() -> bool:
    return (
        os.environ.get("LIT_UNLEARN_SIMD", "1") != "0"
        and os.environ.get("LIT_UNLEARN_COMPILE", "1") != "0"
        and not _state["failed"]
        and "AVX512" in torch.backends.cpu.get_cpu_capability()
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the context, the compiled (or eager) kernels run instead (``LIT_UNLEARN_SIMD=0``): for
    side-by-side measurements."""
    previous = os.environ.get("LIT_UNLEARN_SIMD")
    os.environ["LIT_UNLEARN_SIMD"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["LIT_UNLEARN_SIMD"]
        else:
            os.environ["LIT_UNLEARN_SIMD"] = previous


def applies(tensors: tuple[Tensor | None, ...], group_len: int, max_group: int = MAX_GROUP,
            dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether CPU ``tensors`` (``None`` allowed) of ``dtypes`` in groups of ``group_len`` (at most
    ``max_group``) can run here."""
    return (
        group_len % 16 == 0
        and 0 < group_len <= max_group
        and all(t is None or (t.dtype in dtypes and t.device.type == "cpu") for t in tensors)
        and enabled()
        and _library() is not None
    )


def _library() -> ctypes.CDLL | None:
    if _state["lib"] is not None or _state["failed"]:
        return _state["lib"]
    try:
        _state["lib"] = _load(_build())
    except (OSError, subprocess.CalledProcessError) as error:
        _state["failed"] = True
        detail = getattr(error, "stderr", None) or str(error)
        log.warning("Building the AVX-512 survival kernels failed (%s); the compiled kernels run instead.",
                    str(detail).strip().splitlines()[-1] if str(detail).strip() else type(error).__name__)
    return _state["lib"]


def _build() -> Path:
    source = SOURCE.read_bytes()
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LIT_UNLEARN_CACHE") or Path.home() / ".cache" / "lit_unlearn")
    target = cache / f"simd-{key}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: concurrent builders (test workers, DDP ranks) never load
    # a half-written library.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                       text=True)
        os.replace(built, target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    f32, f64 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)
    i64 = ctypes.c_int64
    void, c_int = ctypes.c_void_p, ctypes.c_int
    lib.bnb4_stats.argtypes = [void, c_int, void, c_int, c_int, i64, i64, f32, f32, f32, ctypes.c_float, f64]
    lib.bnb4_stats.restype = i64
    lib.bnb4_fake_f32.argtypes = [f32, f32, i64, i64, f32, f32, ctypes.c_float, f32]
    lib.bnb4_fake_f32.restype = i64
    lib.legacy_stats_f32.argtypes = [f32, f32, c_int, i64, c_int, c_int, c_int, f64]
    lib.legacy_stats_f32.restype = i64
    lib.legacy_fake_f32.argtypes = [f32, f32, i64, c_int, c_int, c_int, f32]
    lib.legacy_fake_f32.restype = i64
    lib.int8_stats_f32.argtypes = [f32, f32, c_int, i64, i64, ctypes.c_float, ctypes.c_float, f64]
    lib.int8_stats_f32.restype = i64
    lib.bnb4_decode.argtypes = [ctypes.c_void_p, f32, i64, i64, f32, c_int, ctypes.c_void_p]
    lib.bnb4_decode.restype = None
    lib.kquant_q45_f32.argtypes = [f32, i64, c_int, ctypes.c_float, c_int, f32, f32, f32, f32, f32]
    lib.kquant_q45_f32.restype = None
    lib.kquant_q6_f32.argtypes = [f32, i64, f32, f32, f32]
    lib.kquant_q6_f32.restype = None
    return lib


def _floats(t: Tensor) -> Any:
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))


def _table(values: tuple[float, ...]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).contiguous()


def _midpoints(midpoints: tuple[float, ...]) -> Tensor:
    # Midpoint c (1-based) at index c; index 0 is never a candidate of the binary search.
    return _table((float("-inf"), *midpoints))


#: Weight dtypes of the 4-bit statistics, as the kernel's kinds.
KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def stats(flat0: Tensor, flat_other: Tensor, is_delta: bool, tables: dict[str, tuple[float, ...]],
          groups: int, group_len: int, absmax_floor: float) -> tuple[Tensor, int]:
    """``([changed, below half step, <dQ,ΔW>, ||ΔW||², ||dQ||², ||dQ-ΔW||²] in fp64, first bad group or -1)``
    of the first ``groups`` whole groups of contiguous ``flat0`` and ``flat_other`` (fp32, bf16 or fp16: the
    merge and each deployed weight rounded to the weight's dtype, as the compiled kernel rounds them)."""
    flat0, flat_other = flat0.contiguous(), flat_other.contiguous()
    mids, compare, half = _midpoints(tables["midpoints"]), _table(tables["compare"]), _table(tables["half_step"])
    out = torch.zeros(6, dtype=torch.float64)
    bad = _library().bnb4_stats(
        flat0.data_ptr(), KINDS[flat0.dtype], flat_other.data_ptr(), KINDS[flat_other.dtype], int(is_delta), groups,
        group_len, _floats(mids), _floats(compare), _floats(half), absmax_floor,
        ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_double)),
    )
    return out, int(bad)


def fake(flat0: Tensor, flat_delta: Tensor | None, tables: dict[str, tuple[float, ...]], group_len: int,
         absmax_floor: float) -> tuple[Tensor, int]:
    """``(Q(W0 [+ ΔW]) decoded, first bad group or -1)`` of contiguous fp32 weights in whole groups."""
    flat0 = flat0.contiguous()
    flat_delta = None if flat_delta is None else flat_delta.contiguous()
    mids, levels = _midpoints(tables["midpoints"]), _table(tables["dequant"])
    out = torch.empty_like(flat0)
    bad = _library().bnb4_fake_f32(
        _floats(flat0), None if flat_delta is None else _floats(flat_delta), flat0.numel() // group_len,
        group_len, _floats(mids), _floats(levels), absmax_floor, _floats(out),
    )
    return out, int(bad)


#: GGUF's legacy formats: (kind, offset, qmax) of ``legacy_*_f32`` (kind 0: signed absmax, 1: minimum, 2: Q8_0).
LEGACY = {"q4_0": (0, 8, 15), "q5_0": (0, 16, 31), "q4_1": (1, 0, 15), "q5_1": (1, 0, 31), "q8_0": (2, 0, 127)}


def legacy_stats(flat0: Tensor, flat_other: Tensor, is_delta: bool, name: str, groups: int) -> tuple[Tensor, int]:
    """:func:`stats` of a GGUF legacy format ``name`` (blocks of 32)."""
    flat0, flat_other = flat0.contiguous(), flat_other.contiguous()
    out = torch.zeros(6, dtype=torch.float64)
    bad = _library().legacy_stats_f32(
        _floats(flat0), _floats(flat_other), int(is_delta), groups, *LEGACY[name],
        ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_double)),
    )
    return out, int(bad)


def legacy_fake(flat0: Tensor, flat_delta: Tensor | None, name: str) -> tuple[Tensor, int]:
    """:func:`fake` of a GGUF legacy format ``name`` (blocks of 32)."""
    flat0 = flat0.contiguous()
    flat_delta = None if flat_delta is None else flat_delta.contiguous()
    out = torch.empty_like(flat0)
    bad = _library().legacy_fake_f32(
        _floats(flat0), None if flat_delta is None else _floats(flat_delta), flat0.numel() // 32, *LEGACY[name],
        _floats(out),
    )
    return out, int(bad)


def int8_stats(flat0: Tensor, flat_other: Tensor, is_delta: bool, groups: int, group_len: int, inv127: float,
               half_factor: float) -> tuple[Tensor, int]:
    """:func:`stats` of LLM.int8's row-wise codes (rows of ``group_len``, any multiple of 16)."""
    flat0, flat_other = flat0.contiguous(), flat_other.contiguous()
    out = torch.zeros(6, dtype=torch.float64)
    bad = _library().int8_stats_f32(
        _floats(flat0), _floats(flat_other), int(is_delta), groups, group_len, inv127, half_factor,
        ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_double)),
    )
    return out, int(bad)


#: GGUF's K-quants: (nmax, rmin, nstep) of ``kquant_q45_f32``; Q6_K has its own kernel.
KQUANTS = {"q4_k": (15, -1.0, 20), "q5_k": (31, -0.5, 15), "q6_k": None}


def kquant_applies(x: Tensor) -> bool:
    """Whether :func:`kquant` serves ``x``: fp32 on the CPU, where the kernels load."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and enabled() and _library() is not None


def kquant(name: str, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None]:
    """ggml's reference quantizer of K-quant ``name`` on fp32 ``(superblocks, 256)``: ``(codes, d, dmin, sc,
    m)`` as :class:`~lit_unlearn.quantization.gguf_kquants.KBlocks` holds them (``dmin``/``m`` ``None`` for
    Q6_K). ggml's C transcribed, each search run for 8 (Q4_K/Q5_K) or 16 (Q6_K) sub-blocks at once, one per
    vector lane, every lane with the scalar code's operations in its order."""
    x = x.contiguous()
    nb = x.shape[0]
    codes = torch.empty(nb, 256, dtype=torch.float32)
    d = torch.empty(nb, dtype=torch.float32)
    lib = _library()
    if KQUANTS[name] is None:
        sc = torch.empty(nb, 16, dtype=torch.float32)
        lib.kquant_q6_f32(_floats(x), nb, _floats(codes), _floats(d), _floats(sc))
        return codes, d, None, sc, None
    nmax, rmin, nstep = KQUANTS[name]
    dmin, sc, m = torch.empty(nb, dtype=torch.float32), torch.empty(nb, 8, dtype=torch.float32), torch.empty(nb, 8, dtype=torch.float32)
    lib.kquant_q45_f32(_floats(x), nb, nmax, rmin, nstep, _floats(codes), _floats(d), _floats(dmin), _floats(sc),
                       _floats(m))
    return codes, d, dmin, sc, m


_DECODED = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def decode_applies(packed: Tensor, absmax: Tensor, block_size: int, dtype: torch.dtype) -> bool:
    """Whether :func:`decode` serves these packed bytes: CPU, blocks of a multiple of 16, an fp32/bf16/fp16
    result, every block scale finite (a non-finite one decodes as torch decides it, NaN and all)."""
    return (
        packed.device.type == "cpu"
        and dtype in _DECODED
        and block_size % 16 == 0
        and enabled()
        and _library() is not None
        and bool(torch.isfinite(absmax).all())
    )


def decode(packed: Tensor, absmax: Tensor, table: Tensor, block_size: int, n: int, dtype: torch.dtype,
           widened: bool = False, out: Tensor | None = None) -> Tensor:
    """``table[code] * absmax[block]`` of the first ``n`` codes (whole blocks) of ``packed`` uint8 bytes, in
    ``dtype``: bitsandbytes' CUDA decode, as :func:`~lit_unlearn.quantization.bnb_decode.dequantize_4bit_as_cuda`
    computes it; ``widened``: rounded to ``dtype`` but returned in fp32 (``.to(dtype).float()``).

    ``out``: a flat contiguous CPU buffer of the result's dtype and at least ``n`` elements to decode into (the
    result is a view of it). A weight of a 1B model's MLP is 64 MiB in fp32: a fresh one per decode is
    mapped and faulted in page by page, which costs more than the decode itself."""
    packed = packed[: n // 2].contiguous()
    absmax = absmax.float().reshape(-1).contiguous()
    table = table.float().contiguous()
    result_dtype = torch.float32 if widened else dtype
    if out is not None and out.dtype == result_dtype and out.is_contiguous() and out.numel() >= n:
        out = out.reshape(-1)[:n]
    else:
        out = torch.empty(n, dtype=result_dtype)
    kind = _DECODED[dtype] + (3 if widened and dtype != torch.float32 else 0)
    _library().bnb4_decode(packed.data_ptr(), _floats(absmax), n // block_size, block_size, _floats(table),
                           kind, out.data_ptr())
    return out
