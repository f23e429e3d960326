"""``quantize`` / ``dequantize`` / ``fake_quantize`` and the :class:`QuantizedTensor` they exchange.

``fake_quantize(w, scheme)`` is exactly ``dequantize(quantize(w, scheme))`` (tested with ``atol=0``):
the weight a deployment would compute with, in the weight's own shape and dtype. For ``"nf4"``,
``"fp4"`` and ``"int8"`` that is bit for bit what bitsandbytes produces.

Example::

    >>> import torch
    >>> w = torch.randn(64, 256)
    >>> q = quantize(w, "nf4")
    >>> q.codes.shape, q.codes.dtype, q.scales.shape
    (torch.Size([64, 256]), torch.uint8, torch.Size([256]))
    >>> torch.equal(dequantize(q), fake_quantize(w, "nf4"))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_unlearn.quantization._chunks import Chunk, Codec, Encoded, Workspace
from lit_unlearn.quantization.bnb4 import Bnb4Codec, to_bitsandbytes
from lit_unlearn.quantization.fit import fit_scheme
from lit_unlearn.quantization.gguf import GgufCodec
from lit_unlearn.quantization.half import HalfCodec
from lit_unlearn.quantization.rtn import LlmInt8Codec, RtnCodec
from lit_unlearn.quantization.schemes import Scheme, get_scheme

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized weight: integer codes, one scale (and zero point) per group, and what to decode to.

    Attributes:
        codes: Same shape as the weight. nf4/fp4: uint8 level index 0…15 in ascending level order (see
            :mod:`~lit_unlearn.quantization.bnb4`); symmetric RTN and int8: int8 in ``[-qmax, qmax]``;
            asymmetric RTN: uint8 in ``[0, 2^b - 1]``; GGUF formats: the stored code, uint8 (``q8_0``:
            int8), see :mod:`~lit_unlearn.quantization.gguf`.
        scales: fp32. nf4/fp4: per-block absmax, shape ``(ceil(numel / block_size),)``; RTN: the step
            ``s``, shape ``(*weight.shape[:-1], groups_per_row)``; int8: per-row absmax ``SCB``, shape
            ``weight.shape[:-1]``; GGUF: the fp16 block scale ``d`` (or the K-quant sub-block's ``d·sc``),
            shape ``(*weight.shape[:-1], row / 32)`` (``row / 16`` for ``q6_k``).
        zero_points: uint8, shaped like ``scales``, for asymmetric RTN; for GGUF formats with a minimum
            (``q4_1``, ``q5_1``, ``q4_k``, ``q5_k``) fp32 offsets added after scaling (the block min ``m``,
            or ``-dmin·m``); ``None`` otherwise.
        scheme: The :class:`Scheme` (with its block size) that produced the codes: the format the weight's
            shape gets (``q4_k`` on 576-wide rows is ``q5_0``, ``int4`` at group 128 there has group 96;
            see :func:`~lit_unlearn.quantization.fit_scheme`).
        dtype: The original weight's dtype, which :meth:`dequantize` returns.
    """

    codes: Tensor
    scales: Tensor
    zero_points: Tensor | None
    scheme: Scheme
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def numel(self) -> int:
        return self.codes.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> QuantizedTensor:
        """The same codes and scales on ``device``."""
        zp = None if self.zero_points is None else self.zero_points.to(device, non_blocking=non_blocking)
        return QuantizedTensor(
            self.codes.to(device, non_blocking=non_blocking),
            self.scales.to(device, non_blocking=non_blocking),
            zp,
            self.scheme,
            self.dtype,
        )

    def dequantize(self) -> Tensor:
        """See :func:`dequantize`."""
        return dequantize(self)

    def to_bitsandbytes(self) -> tuple[Tensor, Tensor]:
        """The tensors bitsandbytes stores for this weight, for interop and bit-exactness checks.

        Returns:
            nf4/fp4: ``(packed uint8 (ceil(numel/2), 1), absmax fp32)`` as ``quantize_4bit`` returns
            them (with ``quant_state.absmax``); int8: ``(CB int8, SCB fp32)`` as ``Int8Params`` stores.

        Raises:
            ValueError: for RTN schemes, which bitsandbytes does not implement.
        """
        if self.scheme.family == "bnb4":
            return to_bitsandbytes(self.codes, self.scheme), self.scales
        if self.scheme.family == "llm_int8":
            return self.codes, self.scales
        raise ValueError(
            f"Scheme {self.scheme.name!r} has no bitsandbytes counterpart; only 'nf4', 'fp4' and 'int8' do."
        )


def codec_for(scheme: Scheme, device: torch.device) -> Codec:
    if scheme.family == "bnb4":
        return Bnb4Codec(scheme, device)
    if scheme.family == "llm_int8":
        return LlmInt8Codec(scheme, device)
    if scheme.family == "rtn":
        return RtnCodec(scheme, device)
    if scheme.family == "half":
        return HalfCodec(scheme, device)
    if scheme.family == "gguf":
        return GgufCodec(scheme, device)
    if scheme.family == "gguf_mixture":
        raise ValueError(
            f"Scheme {scheme.name!r} is a mixture of GGUF types: resolve it per layer with "
            "fit_scheme(scheme, weight.shape) or layer_schemes(model, scheme) first."
        )
    raise ValueError(f"Scheme {scheme.name!r} has family {scheme.family!r}, which no codec implements.")


def check_weight(weight: Tensor, what: str = "weight") -> None:
    if not isinstance(weight, Tensor):
        raise TypeError(f"`{what}` must be a torch.Tensor, got {type(weight).__name__}.")
    if weight.dtype not in _FLOAT_DTYPES or weight.dim() == 0:
        raise ValueError(
            f"`{what}` must be a floating-point tensor with at least one dimension (float32, bfloat16, "
            f"float16, float64); got dtype {weight.dtype} and shape {tuple(weight.shape)}."
        )


def flat_view(weight: Tensor) -> Tensor:
    # Blocks run over the flattened weight, so a non-contiguous view is made contiguous (one copy).
    return weight.detach().contiguous().view(-1)


def load_chunk(flat: Tensor, chunk: Chunk, ws: Workspace, slot: str) -> Tensor:
    """The chunk as an fp32 ``(groups, group_len)`` matrix: a view for fp32 weights, else a converted copy."""
    raw = flat[chunk.start : chunk.stop].view(chunk.groups, chunk.group_len)
    if raw.dtype == torch.float32:
        return raw
    return ws.get(slot + ".x", torch.float32, chunk).copy_(raw)


def load_reference(codec: Codec, q: QuantizedTensor, chunk: Chunk, ws: Workspace, slot: str) -> Encoded:
    """One chunk of a :class:`QuantizedTensor` in the codec's working representation."""
    stored = q.codes.reshape(-1)[chunk.start : chunk.stop].view(chunk.groups, chunk.group_len)
    scales = q.scales.reshape(-1)[chunk.groups_slice]
    zero_points = None if q.zero_points is None else q.zero_points.reshape(-1)[chunk.groups_slice]
    return codec.load(stored, scales, zero_points, ws, slot, chunk)


def _decode_into(codec: Codec, enc: Encoded, flat_out: Tensor, chunk: Chunk, ws: Workspace) -> None:
    target = flat_out[chunk.start : chunk.stop].view(chunk.groups, chunk.group_len)
    if target.dtype == torch.float32:
        codec.decode(enc, target)
    else:
        # Decode in fp32 and round once to the weight dtype, as bitsandbytes' `.to(dtype)` does.
        target.copy_(codec.decode(enc, ws.get("decoded", torch.float32, chunk)))


@torch.no_grad()
def quantize(weight: Tensor, scheme: str | Scheme, block_size: int | None = None) -> QuantizedTensor:
    """Quantize ``weight`` to integer codes and per-group scales.

    Args:
        weight: Any floating-point tensor (a linear weight is ``(out_features, in_features)``); computed
            in fp32 whatever its dtype, as bitsandbytes does.
        scheme: A name from :data:`~lit_unlearn.quantization.SCHEMES` or a :class:`Scheme`.
        block_size: Overrides the scheme's block (group) size; see :func:`get_scheme`.

    Returns:
        A :class:`QuantizedTensor` whose ``codes`` have ``weight``'s shape.

    Raises:
        ValueError: for an unknown scheme or block size, or non-finite weights. A group that does not
            divide the rows takes :func:`~lit_unlearn.quantization.fit_scheme`'s rule instead.
    """
    check_weight(weight)
    scheme = fit_scheme(get_scheme(scheme, block_size), weight.shape)
    codec = codec_for(scheme, weight.device)
    shape, device = weight.shape, weight.device
    group_len = codec.group_len(shape)
    flat = flat_view(weight)
    codes = torch.empty(shape, dtype=codec.codes_dtype, device=device)
    scales = torch.empty(codec.scales_shape(shape), dtype=torch.float32, device=device)
    # GGUF minimums are fp16 values (offsets in weight units), not integer zero points.
    zp_dtype = torch.float32 if scheme.family == "gguf" else torch.uint8
    zero_points = None if scheme.symmetric else torch.empty(scales.shape, dtype=zp_dtype, device=device)
    flat_codes = codes.view(-1)
    ws = Workspace(flat.numel(), group_len, device)
    for chunk in ws.chunks(flat.numel(), group_len):
        enc = codec.encode(codec.prepare(load_chunk(flat, chunk, ws, "w"), ws, chunk), ws, "w", chunk)
        codec.store(enc, flat_codes[chunk.start : chunk.stop].view(chunk.groups, chunk.group_len))
        scales.view(-1)[chunk.groups_slice] = enc.scales
        if zero_points is not None:
            zero_points.view(-1)[chunk.groups_slice] = enc.zero_points
    return QuantizedTensor(codes, scales, zero_points, scheme, weight.dtype)


@torch.no_grad()
def dequantize(q: QuantizedTensor) -> Tensor:
    """The weight a deployment computes with: ``q.shape``, ``q.dtype``, decoded in fp32 then cast.

    For nf4/fp4 this is bit for bit what bitsandbytes' CUDA kernel decodes (fp4 bit pattern 8 is
    ``-0.0``), :func:`lit_unlearn.quantization.bnb_decode.dequantize_4bit_as_cuda`. bitsandbytes' CPU
    kernels differ on some machines and shapes (the ``bnb_decode`` module says where); for int8 it is
    ``int8_vectorwise_dequant(CB, SCB).to(dtype)``.
    """
    codec = codec_for(q.scheme, q.device)
    group_len = codec.group_len(q.shape)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ws = Workspace(q.numel(), group_len, q.device)
    for chunk in ws.chunks(q.numel(), group_len):
        _decode_into(codec, load_reference(codec, q, chunk, ws, "w"), out.view(-1), chunk, ws)
    return out


@torch.no_grad()
def fake_quantize(weight: Tensor, scheme: str | Scheme, block_size: int | None = None) -> Tensor:
    """``dequantize(quantize(weight, scheme, block_size))`` in one streaming pass (no codes tensor).

    Returns:
        A new tensor with ``weight``'s shape and dtype; ``weight`` is not modified.
    """
    check_weight(weight)
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    return fake_quantize_into(weight, get_scheme(scheme, block_size), out)


def fake_quantize_into(weight: Tensor, scheme: Scheme, out: Tensor) -> Tensor:
    """:func:`fake_quantize` written into contiguous ``out``, which may be ``weight`` itself.

    In place is safe: each chunk is read completely (encoded into scratch buffers) before it is written.
    The scheme is first fitted to the weight's shape (:func:`~lit_unlearn.quantization.fit_scheme`).
    """
    scheme = fit_scheme(scheme, weight.shape)
    codec = codec_for(scheme, weight.device)
    group_len = codec.group_len(weight.shape)
    flat = flat_view(weight)
    flat_out = out.view(-1)
    ws = Workspace(flat.numel(), group_len, weight.device)
    for chunk in ws.chunks(flat.numel(), group_len):
        enc = codec.encode(codec.prepare(load_chunk(flat, chunk, ws, "w"), ws, chunk), ws, "w", chunk)
        _decode_into(codec, enc, flat_out, chunk, ws)
    return out
