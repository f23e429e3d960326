"""How bitsandbytes decodes a 4-bit weight: on a GPU, as a deployment does, and on this machine's CPU.

**The deployment's semantics.** bitsandbytes' CUDA kernel (``kDequantizeBlockwise``) decodes the packed
output of ``quantize_4bit`` over the *flattened* weight: element ``i`` (the high nibble of byte ``i // 2``
when ``i`` is even) is ``level[code_i] * absmax[i // block_size]`` in fp32, then cast to the weight's
dtype. fp4 applies its sign bit to every magnitude, zero included, so bit pattern 8 decodes to ``-0.0``
(``dDequantizeFP4Tree``); nf4's zero is ``+0.0``. :func:`dequantize_4bit_as_cuda` writes this out from
those constants alone, and it is what :func:`lit_unlearn.quantization.dequantize` is tested against, bit
for bit, on every CPU.

**What bitsandbytes 0.50 computes on a CPU** (``bitsandbytes/backends/cpu/ops.py``, ``csrc/cpu_ops.cpp``):
``dequantize_4bit`` picks one of three decoders per call; :func:`cpu_decoder` predicts which.

- ``"torch"``, its pure-torch fallback, for an odd last dimension, or a block of 2048 or more when the
  CPU has AVX-512: CUDA's values, but fp4 pattern 8 decodes to ``+0.0`` (its code table has ``+0``).
- ``"avx512-rows"``, the native AVX-512 kernel, when the CPU has AVX-512, the last dimension is a
  multiple of 16 and the block at least 16: it decodes each row on its own with the scale
  ``absmax[row * (cols // block) + col // block]``. That is the flattened block only when every row is a
  whole number of blocks (``cols % block == 0``); otherwise rows read their neighbours' scales (a
  96-column weight with block 64: rows from the second on are decoded with the wrong scale; a row
  shorter than a block: every row with block 0's). fp4 pattern 8 decodes to ``+0.0`` here too.
- ``"scalar"``, the native scalar loop, otherwise: CUDA's values, bit for bit.

Quantization does not depend on the decoder, but *running* a 4-bit model on an AVX-512 CPU computes
with wrong weights in every layer whose rows are not whole blocks. :func:`cpu_deviation` says so for one
weight.

**Quantizing is not the same on every device either.** bitsandbytes' CPU ``quantize_4bit`` bucketizes
fp4 at the signed fp32 level midpoints; its CUDA kernel (``dQuantizeFP4``) decides by sign and by decimal
magnitude pivots up to 14 ulps away, and orders the two zero patterns the other way round (see
:mod:`~lit_unlearn.quantization.bnb4`). The CPU call stores another fp4 code for 0.56% of random weights
(their ``±0``) and for 5.6% / 34% of weights parked on the upper / lower edge of their cell; nf4's pivots
are the midpoints and agree. And the GPU's ``1 / absmax`` under ``--use_fast_math`` may be an ulp away
from the IEEE reciprocal any CPU computes, which moves a weight sitting exactly on a code's edge.
lit-unlearn quantizes as the CUDA kernel does (:mod:`~lit_unlearn.quantization.bnb4`);
:func:`requantized_like`, which calls bitsandbytes on the weight's device, is the CPU's rule on a CPU.
Reproducer (bitsandbytes 0.50.2, torch 2.13, an AVX-512 CPU)::

    import torch, bitsandbytes.functional as F
    w = torch.randn(4, 96)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    cpu = F.dequantize_4bit(packed, state)                 # per-row kernel
    cuda = dequantize_4bit_as_cuda(packed, state.absmax, "nf4", 64, w.shape)
    (cpu != cuda).sum()                                    # most of rows 1…3 differ

The native kernel checks AVX-512F with CPUID (read here from ``/proc/cpuinfo``); bitsandbytes' Python side
checks torch's ``get_cpu_capability() == "AVX512"`` (its ``_has_avx512`` flag). These rules are read from
bitsandbytes' x86-64 code; on other CPUs its native decoders are not covered here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from math import prod
from typing import Literal

import torch
from torch import Tensor

from lit_unlearn.quantization import _simd
from lit_unlearn.quantization.bnb4 import NF4_LEVELS

__all__ = [
    "CPU_DECODERS",
    "block_scales",
    "cpu_decoder",
    "cpu_deviation",
    "cpu_has_avx512",
    "dequantize_4bit_as_cpu",
    "dequantize_4bit_as_cuda",
    "dequantize_params4bit",
    "describe_cpu_dispatch",
    "is_params4bit",
    "keep_4bit_layout",
    "params4bit_format",
    "requantized_like",
]

CpuDecoder = Literal["torch", "avx512-rows", "scalar"]
CPU_DECODERS: tuple[str, ...] = ("torch", "avx512-rows", "scalar")

# CUDA's fp4 magnitudes by the three low bits of the code (dDequantizeFP4Tree's constants, in fp32).
_FP4_MAGNITUDE: tuple[float, ...] = (
    0.0, 5.208333333e-03, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25,
)
# The native AVX-512 kernel's vectors hold 16 fp32 values.
_AVX512_LANES = 16
# bitsandbytes' CPU backend decodes blocks of this size or larger with its torch fallback on AVX-512.
_AVX512_FALLBACK_BLOCK = 2048


def _cuda_table(quant_type: str, device: torch.device) -> Tensor:
    if quant_type == "nf4":
        return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)
    if quant_type == "fp4":
        magnitude = torch.tensor(_FP4_MAGNITUDE, dtype=torch.float32, device=device)
        return torch.cat([magnitude, -magnitude])  # the sign bit flips zero too: pattern 8 is -0.0
    raise ValueError(f"`quant_type` must be 'nf4' or 'fp4', got {quant_type!r}.")


def _unpack(packed: Tensor, n: int) -> Tensor:
    """The 4-bit codes of ``quantize_4bit``'s packed bytes, high nibble first, as int64."""
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    if flat.numel() * 2 < n:
        raise ValueError(f"{flat.numel()} packed bytes hold {flat.numel() * 2} codes; the shape needs {n}.")
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:n]
    return codes.long()


def _checked(shape: Sequence[int], block_size: int, absmax: Tensor) -> int:
    n = prod(shape)
    if block_size <= 0:
        raise ValueError(f"`block_size` must be positive, got {block_size}.")
    blocks = -(n // -block_size)
    if absmax.numel() != blocks:
        raise ValueError(
            f"`absmax` has {absmax.numel()} scales; {n} elements in blocks of {block_size} need {blocks}."
        )
    return n


def dequantize_4bit_as_cuda(
    packed: Tensor,
    absmax: Tensor,
    quant_type: str,
    block_size: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    widen_to: torch.dtype | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """What bitsandbytes' CUDA kernel decodes from ``quantize_4bit``'s output, computed on any device.

    Args:
        packed: The packed codes (``quantize_4bit``'s first output, or ``Params4bit.data``).
        absmax: The fp32 block scales (``quant_state.absmax``).
        quant_type: ``"nf4"`` or ``"fp4"``.
        block_size: The block size the weight was quantized with.
        shape: The weight's shape.
        dtype: The dtype to cast the fp32 values to.
        widen_to: Return those values in this dtype instead (a wider one: ``.to(dtype).to(widen_to)``).
        out: A flat buffer the AVX-512 decode may write into (see :func:`~lit_unlearn.quantization._simd.decode`;
            the result is then a view of it, valid until the buffer's next use); other paths allocate.

    Returns:
        A tensor of ``shape`` and ``dtype``; fp4 pattern 8 is ``-0.0``.
    """
    n = _checked(shape, block_size, absmax)
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    whole_blocks = not (n % block_size or n % 2 or flat.numel() * 2 < n)
    if widen_to is not None and widen_to != dtype:
        if whole_blocks and widen_to == torch.float32 and _simd.decode_applies(flat, absmax, block_size, dtype):
            table = _cuda_table(quant_type, flat.device)
            return _simd.decode(flat, absmax, table, block_size, n, dtype, widened=True, out=out).reshape(tuple(shape))
        return dequantize_4bit_as_cuda(packed, absmax, quant_type, block_size, shape, dtype).to(widen_to)
    if not whole_blocks:
        table = _cuda_table(quant_type, packed.device)
        values = table[_unpack(packed, n)]
        scales = absmax.float().reshape(-1).repeat_interleave(block_size)[:n]
        return (values * scales).reshape(tuple(shape)).to(dtype)
    if _simd.decode_applies(flat, absmax, block_size, dtype):
        # The same fp32 products and casts, in one pass with a register lookup per 16 codes.
        table = _cuda_table(quant_type, flat.device)
        return _simd.decode(flat, absmax, table, block_size, n, dtype, out=out).reshape(tuple(shape))
    # Whole blocks: one gather per byte from the 256 byte values' two levels (high nibble first), then
    # each block times its scale: the same fp32 products, in two passes over the weight instead of six.
    values = _byte_table(quant_type, packed.device)[flat[: n // 2].long()].view(-1, block_size)
    return (values * absmax.float().reshape(-1, 1)).reshape(tuple(shape)).to(dtype)


def _byte_table(quant_type: str, device: torch.device) -> Tensor:
    """``(256, 2)`` fp32: the levels of a packed byte's high and low nibble."""
    table = _cuda_table(quant_type, device)
    byte = torch.arange(256, device=device)
    return torch.stack([table[byte >> 4], table[byte & 15]], dim=1)


def is_params4bit(weight: object) -> bool:
    """Whether ``weight`` is a bitsandbytes 4-bit parameter (``bnb.nn.Params4bit``, a ``Linear4bit``'s weight)."""
    return type(weight).__name__ == "Params4bit" and getattr(weight, "quant_state", None) is not None


def params4bit_format(weight: Tensor) -> tuple[str, int]:
    """``(quant_type, block_size)`` a bitsandbytes 4-bit parameter is stored in (``"nf4"``, 64)."""
    state = weight.quant_state
    return state.quant_type, int(state.blocksize)


def dequantize_params4bit(weight: Tensor, dtype: torch.dtype | None = None, widen_to: torch.dtype | None = None,
                          out: Tensor | None = None) -> Tensor:
    """The weight a bitsandbytes ``Params4bit`` holds, as the CUDA kernel decodes it, on any device.

    With double quantization (``bnb_4bit_use_double_quant``, ``quant_state.nested``) the block scales are
    themselves 8-bit codes: they are decoded first, as ``dequantize_4bit`` does, to
    ``code2[q] * absmax2[i // blocksize2] + offset`` in fp32.

    Args:
        weight: A ``Linear4bit``'s weight (its ``quant_state`` set, i.e. already quantized).
        dtype: The result's dtype; ``None`` takes the dtype the weight was quantized from
            (``quant_state.dtype``), as ``dequantize_4bit`` returns it.
        widen_to: Return the values rounded to ``dtype`` in this wider dtype instead (``.to(dtype).to(widen_to)``
            in one pass where the AVX-512 decode serves it).
        out: A flat buffer to decode into where the AVX-512 decode serves it (see
            :func:`dequantize_4bit_as_cuda`).
    """
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError(
            "This bitsandbytes 4-bit weight was repacked for bitsandbytes' AVX512-BF16 CPU kernel (an eval-mode "
            "forward without gradients does that), which rounds its block scales to bfloat16: it no longer "
            "holds the weight a GPU deployment loads. Call `lit_unlearn.quantization.bnb_decode."
            "keep_4bit_layout(model)` before the model's first forward (UnlearningModule and the callbacks do)."
        )
    return dequantize_4bit_as_cuda(
        weight.data, block_scales(state), state.quant_type, int(state.blocksize), tuple(state.shape),
        state.dtype if dtype is None else dtype, widen_to=widen_to, out=out,
    )


def block_scales(state: object) -> Tensor:
    """fp32 ``(blocks,)``: the absmax of each block a bitsandbytes ``QuantState`` decodes with; nested
    (double-quantized) scales decoded to ``code2[q] * absmax2[i // blocksize2] + offset``."""
    absmax = state.absmax
    if state.nested:
        inner = state.state2
        index = torch.arange(absmax.numel(), device=absmax.device) // int(inner.blocksize)
        absmax = inner.code.to(absmax.device).float()[absmax.reshape(-1).long()] * inner.absmax.float()[index]
        absmax = absmax + state.offset.float()
    return absmax.float().reshape(-1)


@torch.no_grad()
def requantized_like(weight: Tensor, like: Tensor) -> Tensor:
    """``weight`` quantized by bitsandbytes in the format of the 4-bit parameter ``like`` and decoded.

    Quant type, block size and double quantization are ``like``'s; the decode is the CUDA kernel's. The
    codes are those of bitsandbytes' quantizer on ``weight``'s device: on a CPU its fp4 differs from a
    GPU's on weights at or next to a pivot and on the smallest ones (module docstring); nf4 agrees. The
    result has ``weight``'s dtype.
    """
    import bitsandbytes.functional as bnbf

    state = like.quant_state
    packed, new_state = bnbf.quantize_4bit(
        weight.contiguous(), blocksize=int(state.blocksize), compress_statistics=bool(state.nested),
        quant_type=state.quant_type,
    )
    return dequantize_params4bit(_Packed(packed, new_state), weight.dtype)


class _Packed:
    """The two attributes of a ``Params4bit`` that :func:`dequantize_params4bit` reads."""

    def __init__(self, data: Tensor, quant_state: object) -> None:
        self.data, self.quant_state = data, quant_state


def keep_4bit_layout(model: torch.nn.Module) -> int:
    """Keep every bitsandbytes ``Linear4bit`` of ``model`` in the stored layout; return how many there are.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weight on its first eval-mode
    forward without gradients, for its CPU kernel, and rounds the block scales to bfloat16 on the way. The
    model then computes with weights no GPU deployment of the same checkpoint has, and only on such CPUs.
    This switches that repacking off (``support_avx512bf16_for_cpu = False``), so every machine computes
    with the stored codes and fp32 scales.

    Raises:
        ValueError: for a layer already repacked (its exact scales are gone): reload the model.
    """
    count = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "support_avx512bf16_for_cpu") or not is_params4bit(weight):
            continue
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            raise ValueError(
                f"4-bit layer {name!r} was already repacked for bitsandbytes' AVX512-BF16 CPU kernel, which "
                "rounded its block scales to bfloat16. Reload the model and call `keep_4bit_layout` before its "
                "first forward."
            )
        module.support_avx512bf16_for_cpu = False
        count += 1
    return count


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F, which bitsandbytes' native kernels test with CPUID.

    Read from ``/proc/cpuinfo``; where there is none, torch's ``get_cpu_capability()`` stands in. The two
    can disagree: ``ATEN_CPU_CAPABILITY=avx2`` lowers torch's (and bitsandbytes' Python-side checks that
    read it) but not the native kernel's.
    """
    flags = _cpu_flags()
    if flags is None:
        return torch.backends.cpu.get_cpu_capability() == "AVX512"
    return "avx512f" in flags


def _python_side_avx512() -> bool:
    # bitsandbytes' Python backend reads torch's capability into this flag at import and consults it at
    # call time for its large-block fallback; tests may switch it.
    try:
        from bitsandbytes.backends.cpu import ops
    except ImportError:
        return torch.backends.cpu.get_cpu_capability() == "AVX512"
    return bool(getattr(ops, "_has_avx512", False))


def _native_library_loaded() -> bool:
    try:
        from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib
    except ImportError:
        return False
    return not isinstance(lib, ErrorHandlerMockBNBNativeLibrary)


def cpu_decoder(shape: Sequence[int], block_size: int, avx512: bool | None = None) -> CpuDecoder:
    """Which decoder bitsandbytes 0.50's ``dequantize_4bit`` runs on a CPU for a weight of ``shape``.

    Args:
        shape: The weight's shape.
        block_size: Its block size.
        avx512: Whether the CPU has AVX-512; ``None`` reads this machine (and bitsandbytes' own flag for
            its large-block fallback).
    """
    cols = int(shape[-1]) if len(shape) else 1
    if not _native_library_loaded():
        return "torch"
    native_avx512 = cpu_has_avx512() if avx512 is None else avx512
    python_avx512 = _python_side_avx512() if avx512 is None else avx512
    if cols % 2 or (python_avx512 and block_size >= _AVX512_FALLBACK_BLOCK):
        return "torch"
    if native_avx512 and cols % _AVX512_LANES == 0 and block_size >= _AVX512_LANES:
        return "avx512-rows"
    return "scalar"


def dequantize_4bit_as_cpu(
    packed: Tensor,
    absmax: Tensor,
    quant_type: str,
    block_size: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    decoder: CpuDecoder | None = None,
) -> Tensor:
    """What bitsandbytes 0.50's CPU ``dequantize_4bit`` returns, by :func:`cpu_decoder`'s rules.

    ``decoder`` picks one of :data:`CPU_DECODERS` instead of this machine's. Meant for tests and reports
    that must say what a CPU user gets; a deployment's values are :func:`dequantize_4bit_as_cuda`'s.
    """
    n = _checked(shape, block_size, absmax)
    decoder = cpu_decoder(shape, block_size) if decoder is None else decoder
    if decoder not in CPU_DECODERS:
        raise ValueError(f"`decoder` must be one of {', '.join(CPU_DECODERS)}; got {decoder!r}.")
    if decoder == "scalar":
        return dequantize_4bit_as_cuda(packed, absmax, quant_type, block_size, shape, dtype)
    table = _cuda_table(quant_type, packed.device)
    if quant_type == "fp4":
        table[8] = 0.0  # both CPU paths decode pattern 8 as +0.0
    values = table[_unpack(packed, n)]
    flat_absmax = absmax.float().reshape(-1)
    if decoder == "torch":
        scales = flat_absmax.repeat_interleave(block_size)[:n]
    else:
        cols = int(shape[-1])
        index = torch.arange(n, device=packed.device)
        row, col = index // cols, index % cols
        scales = flat_absmax[row * (cols // block_size) + col // block_size]
    return (values * scales).reshape(tuple(shape)).to(dtype)


def cpu_deviation(
    shape: Sequence[int], block_size: int, quant_type: str, avx512: bool | None = None
) -> str | None:
    """How bitsandbytes' CPU decoding of such a weight differs from a GPU's, or ``None`` if it does not.

    ``"scales"``: rows that are not whole blocks are decoded with other blocks' scales (wrong values);
    ``"zero sign"``: only fp4's ``-0.0`` comes back as ``+0.0`` (equal values, other bits).
    """
    decoder = cpu_decoder(shape, block_size, avx512)
    cols = int(shape[-1])
    rows = prod(shape) // cols
    # Row r, column c reads block r * (cols // block) + c // block instead of (r * cols + c) // block:
    # the same for every element only when rows are whole blocks, or the weight is one row or one block.
    if decoder == "avx512-rows" and cols % block_size and rows > 1 and rows * cols > block_size:
        return "scales"
    if decoder != "scalar" and quant_type == "fp4":
        return "zero sign"
    return None


def describe_cpu_dispatch() -> str:
    """One line for logs: this CPU's capability and the 4-bit decoders bitsandbytes will run here."""
    try:
        import bitsandbytes

        version = bitsandbytes.__version__
    except ImportError:
        version = "not installed"
    capability = torch.backends.cpu.get_cpu_capability()
    native = "native kernels see AVX-512F" if cpu_has_avx512() else "native kernels see no AVX-512F"
    if cpu_has_avx512():
        paths = (
            "dequantize_4bit: native AVX-512 per-row kernel where cols % 16 == 0 and 16 <= block < 2048 "
            "(wrong scales where cols % block != 0; fp4 -0.0 as +0.0), torch fallback for odd cols, "
            "native scalar loop otherwise"
        )
    else:
        paths = "dequantize_4bit: native scalar loop (GPU semantics), torch fallback for odd cols"
    large = "torch fallback" if _python_side_avx512() else "native"
    return (
        f"torch {torch.__version__} CPU capability {capability}; {native}; bitsandbytes {version} {paths} "
        f"(blocks >= 2048 here: {large})"
    )
