"""bf16 / fp16 as quantization schemes: the half-precision copy a deployment stores.

``Q(w)`` is ``w`` rounded to the nearest bf16 (fp16) value, ties to even — what ``w.to(torch.bfloat16)``,
a bf16 merge and ``save_pretrained(dtype=torch.bfloat16)`` compute. The stored code is that value's bit
pattern (int16); there is no scale (each group's scale is 1). Two codes that decode to equal values
(``-0.0`` and ``+0.0``) count as the same code in the survival statistics, which compare values.

The local step is the spacing of the dtype's values above ``|Q(w)|`` (its ulp there), so
``below_half_step`` is the share of the update under half an ulp of its weight: the updates this copy
rounds away.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.quantization._chunks import Chunk, Codec, Encoded, Workspace
from lit_unlearn.quantization.schemes import Scheme

_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Explicit mantissa bits, and the smallest normal exponent (of frexp's [0.5, 1) convention).
_MANTISSA = {"bf16": 7, "fp16": 10}
_MIN_EXPONENT = {"bf16": -125, "fp16": -13}


class HalfCodec(Codec):
    """Round to bf16/fp16; codes are the int16 bit patterns, working values the rounded fp32 values."""

    codes_dtype = torch.int16

    def __init__(self, scheme: Scheme, device: torch.device) -> None:
        self.name = scheme.name
        self.dtype = _DTYPE[scheme.name]

    def group_len(self, shape: torch.Size) -> int:
        return max(shape[-1] if len(shape) else 1, 1)

    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(shape[:-1])

    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        half = ws.get(slot + ".half", self.dtype, chunk).copy_(x)
        values = ws.get(slot + ".codes", torch.float32, chunk).copy_(half)
        return Encoded(values, torch.ones(chunk.groups, device=x.device), None)

    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        values = ws.get(slot + ".codes", torch.float32, chunk).copy_(stored.view(self.dtype))
        return Encoded(values, scales, None)

    def store(self, enc: Encoded, out: Tensor) -> None:
        out.copy_(enc.codes.to(self.dtype).view(torch.int16))

    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        return enc.codes

    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        return values

    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        return out.copy_(enc.codes)

    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        _, exponent = torch.frexp(enc.codes)
        exponent = exponent.clamp(min=_MIN_EXPONENT[self.name])  # subnormals: the fixed smallest spacing
        ulp = torch.ldexp(torch.ones_like(enc.codes), exponent - 1 - _MANTISSA[self.name])
        return ulp.mul_(0.5)
