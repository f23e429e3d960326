"""The bytes of a GGUF tensor: ggml's block structs (``ggml-common.h``), packed and unpacked with numpy.

:func:`gguf_bytes` quantizes a weight with ggml's reference quantizer and returns exactly the bytes a
``.gguf`` file stores for it (rows concatenated, blocks along each row); :func:`from_gguf_bytes` decodes
such bytes to the fp32 weight ggml's ``dequantize_row_*`` produces. Block layouts (little-endian fp16)::

    q4_0  d | qs[16]                      q4_k  d | dmin | scales[12] | qs[128]
    q4_1  d | m | qs[16]                  q5_k  d | dmin | scales[12] | qh[32] | qs[128]
    q5_0  d | qh[4] | qs[16]              q6_k  ql[128] | qh[64] | scales[16] (int8) | d
    q5_1  d | m | qh[4] | qs[16]
    q8_0  d | qs[32] (int8)

Example::

    >>> import torch
    >>> from lit_unlearn.quantization import fake_quantize
    >>> w = torch.randn(4, 64)
    >>> data = gguf_bytes(w, "q4_1")
    >>> data.shape, data.dtype
    ((4, 40), dtype('uint8'))
    >>> torch.equal(from_gguf_bytes(data, "q4_1", (4, 64)), fake_quantize(w, "q4_1"))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lit_unlearn.quantization.gguf_formats import GGUF_FORMAT_RECORDS
from lit_unlearn.quantization.gguf_kquants import KQUANTIZERS, QK_K, KBlocks
from lit_unlearn.quantization.gguf_legacy import QK_LEGACY, LegacyBlocks, dequantize_legacy, quantize_legacy

_RECORDS = sorted(GGUF_FORMAT_RECORDS, key=lambda f: f.ggml_type)
#: ggml's ``enum ggml_type`` value of each format (also ``gguf.GGMLQuantizationType``), in ggml's order.
GGML_TYPE = {f.name: f.ggml_type for f in _RECORDS}
#: Weights per block and bytes per block (``ggml_blck_size`` / ``ggml_type_size``).
BLOCK_WEIGHTS = {f.name: f.block_weights for f in _RECORDS}
BLOCK_BYTES = {f.name: f.block_bytes for f in _RECORDS}
GGUF_FORMATS: tuple[str, ...] = tuple(GGML_TYPE)


def check_format(name: str) -> None:
    if name not in GGML_TYPE:
        raise ValueError(f"{name!r} is not a GGUF block format; choose one of {', '.join(map(repr, GGUF_FORMATS))}.")


def check_row(shape: Sequence[int], name: str) -> int:
    """The row length of a weight of ``shape``, after checking that whole ``name`` blocks tile it."""
    row = int(shape[-1]) if len(shape) else 1
    block = BLOCK_WEIGHTS[name]
    if row % block:
        hint = (
            " llama.cpp stores such a tensor in a legacy type instead (q4_k→q5_0, q5_k→q5_1, q6_k→q8_0; see "
            "gguf_fallback_type)." if block == QK_K else " Rows must be whole 32-weight blocks."
        )
        raise ValueError(
            f"A weight of shape {tuple(shape)} has rows of {row} weights, not a multiple of {block}, the block "
            f"of {name!r}.{hint}"
        )
    return row


def quantize_blocks(x: Tensor, name: str) -> LegacyBlocks | KBlocks:
    """ggml's reference quantizer ``name`` on fp32 ``x`` of shape ``(blocks, block_weights)``."""
    if name in KQUANTIZERS:
        return KQUANTIZERS[name](x)
    return quantize_legacy(x, name)


def _half_bytes(v: Tensor) -> np.ndarray:
    return v.to(torch.float16).cpu().numpy().view(np.uint8).reshape(-1, 2)


def _nibbles(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low & 0xF) | ((high & 0xF) << 4)


def _bits(q: np.ndarray, bit: int) -> np.ndarray:
    """Bit ``bit`` of each code packed little-endian, 8 codes a byte: ``(blocks, n)`` → ``(blocks, n/8)``."""
    return np.packbits((q >> bit) & 1, axis=1, bitorder="little")


def pack_blocks(blocks: LegacyBlocks | KBlocks, name: str) -> np.ndarray:
    """ggml block structs of ``blocks`` as ``(n_blocks, BLOCK_BYTES[name])`` uint8."""
    q = blocks.codes.to(torch.int64).cpu().numpy()
    if name == "q8_0":
        return np.concatenate([_half_bytes(blocks.d), q.astype(np.int8).view(np.uint8)], axis=1)
    if name in ("q4_0", "q4_1", "q5_0", "q5_1"):
        parts = [_half_bytes(blocks.d)]
        if blocks.m is not None:
            parts.append(_half_bytes(blocks.m))
        if name in ("q5_0", "q5_1"):
            parts.append(_bits(q, 4))  # qh: bit j = fifth bit of code j, as a little-endian uint32
        parts.append(_nibbles(q[:, :16], q[:, 16:]).astype(np.uint8))
        return np.concatenate(parts, axis=1)
    if name in ("q4_k", "q5_k"):
        quads = q.reshape(-1, 4, 2, 32)  # 64-weight chunks: low nibbles from the first 32, high from the next
        parts = [_half_bytes(blocks.d), _half_bytes(blocks.dmin), _pack_scale_min(blocks.sc, blocks.m)]
        if name == "q5_k":
            # qh[j] bit 2c (2c+1): fifth bit of weight 64c + j (64c + 32 + j).
            fifth = (quads >> 4) & 1
            shifts = 2 * np.arange(4)[None, :, None, None] + np.arange(2)[None, None, :, None]
            parts.append(np.sum(fifth << shifts, axis=(1, 2)).astype(np.uint8))
        parts.append(_nibbles(quads[:, :, 0], quads[:, :, 1]).reshape(-1, 128).astype(np.uint8))
        return np.concatenate(parts, axis=1)
    if name == "q6_k":
        halves = q.reshape(-1, 2, 4, 32)  # two 128-weight halves of four 32-weight quarters
        ql = np.stack([_nibbles(halves[:, :, 0], halves[:, :, 2]), _nibbles(halves[:, :, 1], halves[:, :, 3])], 2)
        qh = sum(((halves[:, :, k] >> 4) & 3) << (2 * k) for k in range(4))
        sc = blocks.sc.to(torch.int64).cpu().numpy().astype(np.int8).view(np.uint8)
        return np.concatenate(
            [ql.reshape(-1, 128).astype(np.uint8), qh.reshape(-1, 64).astype(np.uint8), sc, _half_bytes(blocks.d)],
            axis=1,
        )
    check_format(name)
    raise AssertionError(name)


def _pack_scale_min(sc: Tensor, m: Tensor) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of eight 6-bit scales and eight 6-bit mins (``get_scale_min_k4`` inverted)."""
    ls = sc.to(torch.int64).cpu().numpy()
    lm = m.to(torch.int64).cpu().numpy()
    out = np.zeros((ls.shape[0], 12), dtype=np.int64)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out.astype(np.uint8)


def _unpack_scale_min(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = b.astype(np.int64)
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _half(b: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(b).view(np.float16).reshape(-1).astype(np.float32))


def unpack_blocks(data: np.ndarray, name: str) -> LegacyBlocks | KBlocks:
    """Inverse of :func:`pack_blocks`: ``(n_blocks, BLOCK_BYTES[name])`` uint8 → codes and scales."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, BLOCK_BYTES[name])
    if name == "q8_0":
        codes = data[:, 2:].view(np.int8).astype(np.float32)
        return LegacyBlocks(torch.from_numpy(codes), _half(data[:, :2]), None)
    if name in ("q4_0", "q4_1", "q5_0", "q5_1"):
        has_min = name in ("q4_1", "q5_1")
        at = 4 if has_min else 2
        m = _half(data[:, 2:4]) if has_min else None
        q = data[:, -16:].astype(np.int64)
        codes = np.concatenate([q & 0xF, q >> 4], axis=1)
        if name in ("q5_0", "q5_1"):
            codes |= np.unpackbits(data[:, at : at + 4], axis=1, bitorder="little").astype(np.int64) << 4
        return LegacyBlocks(torch.from_numpy(codes.astype(np.float32)), _half(data[:, :2]), m)
    if name in ("q4_k", "q5_k"):
        sc, m = _unpack_scale_min(data[:, 4:16])
        qs = data[:, -128:].astype(np.int64).reshape(-1, 4, 1, 32)
        codes = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (blocks, 4, 2, 32)
        if name == "q5_k":
            qh = data[:, 16:48].astype(np.int64)[:, None, None, :]
            shifts = 2 * np.arange(4)[None, :, None, None] + np.arange(2)[None, None, :, None]
            codes |= ((qh >> shifts) & 1) << 4
        return KBlocks(
            torch.from_numpy(codes.reshape(-1, QK_K).astype(np.float32)), _half(data[:, 0:2]), _half(data[:, 2:4]),
            torch.from_numpy(sc.astype(np.float32)), torch.from_numpy(m.astype(np.float32)),
        )
    if name == "q6_k":
        ql = data[:, :128].astype(np.int64).reshape(-1, 2, 2, 32)
        qh = data[:, 128:192].astype(np.int64).reshape(-1, 2, 1, 32)
        low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (qh >> (2 * np.arange(4))[None, None, :, None]) & 3
        codes = (low | (high << 4)).reshape(-1, QK_K)
        sc = data[:, 192:208].view(np.int8).astype(np.float32)
        return KBlocks(torch.from_numpy(codes.astype(np.float32)), _half(data[:, 208:210]), None,
                       torch.from_numpy(sc), None)
    check_format(name)
    raise AssertionError(name)


def dequantize_blocks(blocks: LegacyBlocks | KBlocks, name: str) -> Tensor:
    """ggml's ``dequantize_row_*``: fp32 ``(n_blocks, block_weights)``."""
    if isinstance(blocks, LegacyBlocks):
        return dequantize_legacy(blocks.codes, blocks.d, blocks.m, name)
    sub = 16 if name == "q6_k" else 32
    codes = blocks.codes.view(-1, sub)
    scales = blocks.sub_scales().reshape(-1, 1)
    if name == "q6_k":
        return (scales * (codes - 32)).view(-1, QK_K)
    return (scales * codes - blocks.sub_mins().reshape(-1, 1)).view(-1, QK_K)


def _rows(weight: Tensor, name: str) -> tuple[Tensor, int]:
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise TypeError(f"`weight` must be a floating-point torch.Tensor, got {type(weight).__name__}.")
    check_format(name)
    row = check_row(weight.shape, name)
    x = weight.detach().to(device="cpu", dtype=torch.float32).reshape(-1, BLOCK_WEIGHTS[name])
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"The weight of shape {tuple(weight.shape)} has NaN or inf values; ggml cannot quantize them.")
    return x, row


def gguf_bytes(weight: Tensor, name: str) -> np.ndarray:
    """The bytes a ``.gguf`` file stores for ``weight`` in format ``name``, as ggml's reference quantizer.

    Args:
        weight: A floating-point tensor whose last dimension (a row, the input dimension of a linear
            weight) is a whole number of blocks: 32 weights for ``q8_0``/``q4_0``/``q4_1``/``q5_0``/``q5_1``,
            256 for ``q4_k``/``q5_k``/``q6_k``. Quantized in fp32 whatever its dtype.
        name: One of :data:`GGUF_FORMATS`.

    Returns:
        ``(rows, bytes_per_row)`` uint8, ``rows`` the product of the leading dimensions: what
        ``ggml_quantize_chunk`` writes (and ``gguf.GGUFWriter.add_tensor(..., raw_dtype=...)`` stores).

    Raises:
        ValueError: for an unknown format, rows that are not whole blocks, or non-finite weights.
    """
    x, row = _rows(weight, name)
    packed = pack_blocks(quantize_blocks(x, name), name)
    return packed.reshape(-1, row // BLOCK_WEIGHTS[name] * BLOCK_BYTES[name])


def from_gguf_bytes(data: np.ndarray, name: str, shape: Sequence[int]) -> Tensor:
    """Decode GGUF tensor bytes to the fp32 weight ggml's ``dequantize_row_*`` computes.

    Args:
        data: uint8 bytes as :func:`gguf_bytes` returns (any shape; read in order).
        name: One of :data:`GGUF_FORMATS`.
        shape: The weight's shape (torch order: rows first, the last dimension along blocks).

    Raises:
        ValueError: for an unknown format, a row that is not whole blocks, or a byte count that does not
            match ``shape``.
    """
    check_format(name)
    shape = tuple(int(s) for s in shape)
    check_row(shape, name)
    numel = int(np.prod(shape)) if shape else 1
    expected = numel // BLOCK_WEIGHTS[name] * BLOCK_BYTES[name]
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.size != expected:
        raise ValueError(
            f"`data` holds {data.size} values of dtype {data.dtype}; a {name!r} tensor of shape {shape} needs "
            f"{expected} uint8 bytes."
        )
    return dequantize_blocks(unpack_blocks(data, name), name).reshape(shape)
