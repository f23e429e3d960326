"""Uniform integer grids: group-wise round-to-nearest (int-k) and LLM.int8's row-wise weight format.

Round-to-nearest with ``b`` bits, one scale per group of ``G`` consecutive weights along the last
(input) dimension, or per output row (also when a row is shorter than ``G``; a longer row must be a
multiple of ``G``). All arithmetic in fp32; ``round`` is ``torch.round`` (ties to even)::

    symmetric:  s = max|w| / qmax,  qmax = 2^(b-1) - 1
                code = clamp(round(w / s), -qmax, qmax)          Q(w) = s * code
    asymmetric: lo = min(min w, 0), hi = max(max w, 0),  s = (hi - lo) / (2^b - 1)
                z = clamp(round(-lo / s), 0, 2^b - 1)             (0.0 is exactly representable)
                code = clamp(round(w / s) + z, 0, 2^b - 1)        Q(w) = s * (code - z)

The symmetric range leaves out -2^(b-1): with ``s = max|w| / qmax`` no weight rounds there, so the grid
is symmetric around 0 and the clamp is only a guard. A group of zeros gets ``s = 0`` and codes 0 (or
``z``), and dequantizes to zeros.

LLM.int8 (``load_in_8bit``, what ``bitsandbytes.nn.Int8Params`` stores): the weight is first cast to
fp16, then ``SCB = max|w| per row``, ``code = round(w * (127 / SCB))`` and
``Q(w) = code * SCB * (1 / 127)``, exactly as ``bitsandbytes.functional.int8_vectorwise_quant`` and
``int8_vectorwise_dequant`` compute them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.quantization._chunks import Chunk, Codec, Encoded, Workspace, check_finite
from lit_unlearn.quantization.schemes import Scheme

# bitsandbytes' int8_vectorwise_dequant multiplies by this literal instead of dividing by 127.
_INV_127 = 7.874015718698502e-3


def _row_len(shape: torch.Size) -> int:
    return shape[-1] if len(shape) else 1


class RtnCodec(Codec):
    """Symmetric or zero-point round-to-nearest over groups along the last dimension.

    Working codes are integer-valued fp32; zero points are fp32 inside a chunk, uint8 when stored.
    """

    def __init__(self, scheme: Scheme, device: torch.device) -> None:
        self.scheme = scheme
        self.symmetric = scheme.symmetric
        self.qmax = scheme.qmax
        self.codes_dtype = torch.int8 if scheme.symmetric else torch.uint8

    def group_len(self, shape: torch.Size) -> int:
        row = _row_len(shape)
        group = self.scheme.block_size
        # Groups never span rows: a row no longer than the group size is one group.
        if group is None or group >= row:
            return max(row, 1)
        if row % group:
            divisors = [d for d in range(min(row, 512), 7, -1) if row % d == 0][:6]
            listed = ", ".join(map(str, divisors))
            fits = f"group sizes that divide it: {listed}. Pass one of those, or" if divisors else "pass"
            raise ValueError(
                f"`block_size`={group} does not divide the last dimension {row} of a weight of shape "
                f"{tuple(shape)} for scheme {self.scheme.name!r}; {fits} block_size=-1 for one scale per "
                "output row."
            )
        return group

    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (*shape[:-1], _row_len(shape) // self.group_len(shape))

    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        codes = ws.get(slot + ".codes", torch.float32, chunk)
        if self.symmetric:
            scales = torch.abs(x, out=codes).amax(dim=1).div_(self.qmax)
            zero_points, low = None, -self.qmax
        else:
            lo = x.amin(dim=1).clamp_(max=0.0)
            scales = (x.amax(dim=1).clamp_(min=0.0) - lo).div_(self.qmax)
            low = 0
        check_finite(scales, chunk)
        # A zero group has s = 0; dividing by 1 instead gives code 0 (or z) and Q(w) = 0 either way.
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        torch.div(x, safe[:, None], out=codes).round_()
        if not self.symmetric:
            zero_points = torch.round(-lo / safe).clamp_(0, self.qmax)
            codes.add_(zero_points[:, None])
        return Encoded(codes.clamp_(low, self.qmax), scales, zero_points)

    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        codes = ws.get(slot + ".codes", torch.float32, chunk).copy_(stored)
        return Encoded(codes, scales, None if zero_points is None else zero_points.float())

    def store(self, enc: Encoded, out: Tensor) -> None:
        out.copy_(enc.codes)

    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        return enc.codes

    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        if enc.zero_points is not None:
            values.sub_(enc.zero_points[:, None])
        return values.mul_(enc.scales[:, None])

    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        if enc.zero_points is None:
            # round() leaves -0.0 for small negatives; a stored integer code 0 decodes to +0.0.
            return torch.mul(enc.codes, enc.scales[:, None], out=out).add_(0.0)
        torch.sub(enc.codes, enc.zero_points[:, None], out=out)
        return out.mul_(enc.scales[:, None])

    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        return (enc.scales / 2)[:, None]


class LlmInt8Codec(Codec):
    """LLM.int8 row-wise absmax int8 (symmetric, codes in [-127, 127], scales = per-row absmax ``SCB``)."""

    codes_dtype = torch.int8

    def __init__(self, scheme: Scheme, device: torch.device) -> None:
        self.scheme = scheme

    def group_len(self, shape: torch.Size) -> int:
        return max(_row_len(shape), 1)

    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(shape[:-1])

    def prepare(self, x: Tensor, ws: Workspace, chunk: Chunk) -> Tensor:
        # Int8Params casts the weight to fp16 before quantizing; that rounding is part of the format.
        half = ws.get("fp16", torch.float16, chunk).copy_(x)
        return ws.get("fp16_values", torch.float32, chunk).copy_(half)

    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        codes = ws.get(slot + ".codes", torch.float32, chunk)
        scales = torch.abs(x, out=codes).amax(dim=1)
        check_finite(scales, chunk)
        # `127.0 / t` is t.reciprocal() * 127 in torch, as in int8_vectorwise_quant. A zero row would
        # give 0 * inf = NaN there (cast to code 0 on x86); code 0 is what we define.
        factor = torch.where(scales > 0, 127.0 / scales, torch.zeros_like(scales))
        torch.mul(x, factor[:, None], out=codes)
        return Encoded(codes.round_(), scales, None)

    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        return Encoded(ws.get(slot + ".codes", torch.float32, chunk).copy_(stored), scales, None)

    def store(self, enc: Encoded, out: Tensor) -> None:
        out.copy_(enc.codes)

    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        return enc.codes

    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        return values.mul_(enc.scales[:, None]).mul_(_INV_127)

    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        torch.mul(enc.codes, enc.scales[:, None], out=out)
        # round() leaves -0.0 for small negatives; bitsandbytes' int8 code 0 decodes to +0.0.
        return out.mul_(_INV_127).add_(0.0)

    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        return (enc.scales * (_INV_127 / 2))[:, None]
