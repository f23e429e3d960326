"""GGUF block formats as a codec of the streaming machinery (:mod:`~lit_unlearn.quantization._chunks`).

A GGUF weight is quantized row by row (the last, input dimension) in blocks: 32 weights for the legacy
``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1`` (:mod:`.gguf_legacy`), 256-weight super-blocks for the
K-quants ``q4_k``, ``q5_k``, ``q6_k`` (:mod:`.gguf_kquants`), exactly as ggml's reference quantizers do.

In a :class:`~lit_unlearn.quantization.QuantizedTensor` every run of weights that shares one scale is a
group: a 32-weight block (legacy), a 32-weight sub-block (Q4_K, Q5_K) or a 16-weight sub-block (Q6_K).
Per group it stores what ggml's ``dequantize_row_*`` multiplies and adds, so that::

    Q(w) = scales · (codes - offset) + zero_points        (zero_points absent: + 0)

* ``codes``: the stored codes, uint8 (``q8_0``: int8), ``offset`` 8 for ``q4_0``, 16 for ``q5_0``, 32 for
  ``q6_k``, else 0;
* ``scales``: fp32, the block's fp16 ``d`` (legacy) or the sub-block's ``d·sc_j`` (K-quants, exact in fp32);
* ``zero_points``: fp32 offsets, not integers: the fp16 block minimum ``m`` (``q4_1``, ``q5_1``) or
  ``-dmin·m_j`` (``q4_k``, ``q5_k``); ``None`` for the symmetric formats.

Chunks hold whole super-blocks: rows are whole super-blocks, and chunks are whole numbers of 2^19
elements or whole weights. The half step of the survival statistics is ``|scale| / 2``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.quantization._chunks import Chunk, Codec, Encoded, Workspace, raise_not_finite
from lit_unlearn.quantization.gguf_bytes import check_row
from lit_unlearn.quantization.gguf_kquants import K_SUBBLOCK, KQUANTIZERS, QK_K
from lit_unlearn.quantization.gguf_legacy import LEGACY_OFFSET, QK_LEGACY, quantize_legacy
from lit_unlearn.quantization.schemes import Scheme

_OFFSET = {**LEGACY_OFFSET, "q4_k": 0, "q5_k": 0, "q6_k": 32}
_GROUP = {**{name: QK_LEGACY for name in LEGACY_OFFSET}, **K_SUBBLOCK}


class GgufCodec(Codec):
    """ggml's reference quantizer for one GGUF format; working codes are integer-valued fp32."""

    def __init__(self, scheme: Scheme, device: torch.device) -> None:
        self.name = scheme.name
        self.offset = _OFFSET[scheme.name]
        self.group = _GROUP[scheme.name]
        self.codes_dtype = torch.int8 if scheme.name == "q8_0" else torch.uint8

    def group_len(self, shape: torch.Size) -> int:
        check_row(shape, self.name)
        return self.group

    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (*shape[:-1], shape[-1] // self.group)

    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        if self.name not in KQUANTIZERS:
            blocks = quantize_legacy(x, self.name)
            # Where the quantizer's block reductions already tell whether every weight is finite, a check
            # of those is a check of every weight at a 32nd of the cost.
            finite = torch.isfinite(x) if blocks.finite is None else blocks.finite
            if not bool(finite.all()):
                raise_not_finite(chunk)
            return Encoded(blocks.codes, blocks.d, blocks.m)
        if not bool(torch.isfinite(x).all()):
            raise_not_finite(chunk)
        blocks = KQUANTIZERS[self.name](x.reshape(-1, QK_K))
        mins = blocks.sub_mins()
        return Encoded(
            blocks.codes.view(chunk.groups, chunk.group_len),
            blocks.sub_scales().reshape(-1),
            None if mins is None else mins.neg_().reshape(-1),  # a - b is a + (-b) exactly
        )

    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        return Encoded(ws.get(slot + ".codes", torch.float32, chunk).copy_(stored), scales, zero_points)

    def store(self, enc: Encoded, out: Tensor) -> None:
        out.copy_(enc.codes)

    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        out = ws.get(slot + ".values", torch.float32, chunk)
        return torch.sub(enc.codes, self.offset, out=out) if self.offset else out.copy_(enc.codes)

    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        values.mul_(enc.scales[:, None])
        return values if enc.zero_points is None else values.add_(enc.zero_points[:, None])

    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        if self.offset:
            torch.sub(enc.codes, self.offset, out=out)
        else:
            out.copy_(enc.codes)
        return self.scale(out, enc)

    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        return (enc.scales.abs() / 2)[:, None]
