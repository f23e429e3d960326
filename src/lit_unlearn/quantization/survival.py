"""Will an update survive quantization? Weight-space statistics of ``Q(W0 + ΔW) - Q(W0)`` against ``ΔW``.

Per layer, with ``Q`` the scheme's fake quantization (:func:`~lit_unlearn.quantization.fake_quantize`)
and ``dQ = Q(W1) - Q(W0)``, ``W1 = W0 + ΔW``:

* ``changed``: share of weights whose integer code differs between ``Q(W0)`` and ``Q(W1)``. Codes, not
  dequantized values: nudging a block's absmax by 1e-7 changes every value of the block, no code.
  (fp4 has two codes for 0.0; a weight moving between them counts as changed.)
* ``below_half_step``: share of weights with ``|ΔW| < step / 2``, ``step`` the local quantization step
  of ``W0``'s group at ``W0``'s code: the grid spacing ``s`` for RTN and ``SCB / 127`` for int8; for
  the non-uniform nf4/fp4 grids, ``absmax`` times the mean distance from ``W0``'s level to its two
  neighbouring levels (one-sided at ±1). On a uniform grid, an update under half a step cannot carry
  a weight that sits on its level across a rounding boundary.
* ``retained = <dQ, ΔW> / ||ΔW||²``: how much of the update the quantized model carries, projected.
* ``cosine = cos(dQ, ΔW)`` and ``rel_error = ||dQ - ΔW|| / ||ΔW||``: signal versus rounding noise.
* ``delta_norm = ||ΔW||``, ``qdelta_norm = ||dQ||`` (Frobenius, in weight units).

The paper notes (PAPER.md, "Detecting an update that will not survive") explain why no single number
is a verdict: with weights spread over their bins, the few codes that flip carry the update on
average (``retained ≈ 1`` with ``changed ≪ 1``), and 4-bit adds noise (low ``cosine``) rather than
erasing the mean.

A layer whose ``ΔW`` is exactly zero reports ``retained = cosine = rel_error = 0`` (not NaN), so
dashboards stay readable; ``delta_norm = 0`` tells it apart.

Cost: one streaming pass over ``W0`` and ``W1`` in chunks (peak extra memory about a third of a
2048 x 8192 fp32 matrix on CPU). Passing ``reference=quantize(W0)`` skips re-quantizing a frozen base
in the eager path. On CPU, weights of at least 2^17 elements are checked by a compiled kernel
(:mod:`~lit_unlearn.quantization._fused`, ``LIT_UNLEARN_COMPILE=0`` turns it off) that re-encodes ``W0``
in the same pass, which is cheaper there than reading cached codes. The eager path is ~30 small torch
ops per chunk; on a CPU shared with other busy processes they run far faster with one intra-op thread
(``torch.set_num_threads(1)``) than with several.

Example::

    >>> import torch
    >>> w0 = torch.randn(128, 256) * 0.02
    >>> stats = survival_stats(w0, w0 + 1e-3 * torch.randn_like(w0), "nf4")
    >>> sorted(stats.as_dict())
    ['below_half_step', 'changed', 'cosine', 'delta_norm', 'numel', 'qdelta_norm', 'rel_error', 'retained']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from lit_unlearn.quantization import _fused
from lit_unlearn.quantization._chunks import Workspace
from lit_unlearn.quantization.fit import fit_scheme
from lit_unlearn.quantization.functional import (
    QuantizedTensor,
    check_weight,
    codec_for,
    flat_view,
    load_chunk,
    load_reference,
)
from lit_unlearn.quantization.merge import merge
from lit_unlearn.quantization.schemes import Scheme, get_scheme


@dataclass(frozen=True)
class SurvivalStats:
    """Sufficient statistics of one or more layers; ``a + b`` and :meth:`aggregate` pool layers.

    Pooled statistics equal those of all the layers' weights concatenated into one vector: shares are
    weighted by parameter count, the projections by ``||ΔW||²``.

    Attributes:
        numel: Number of weights.
        n_changed: Weights whose code changed.
        n_below_half_step: Weights with ``|ΔW| < step / 2``.
        dot: ``<dQ, ΔW>``. ``delta_sq``: ``||ΔW||²``. ``qdelta_sq``: ``||dQ||²``.
        residual_sq: ``||dQ - ΔW||²`` (summed directly, not from the other three, to avoid cancellation).
    """

    numel: int = 0
    n_changed: int = 0
    n_below_half_step: int = 0
    dot: float = 0.0
    delta_sq: float = 0.0
    qdelta_sq: float = 0.0
    residual_sq: float = 0.0

    def __add__(self, other: SurvivalStats) -> SurvivalStats:
        if not isinstance(other, SurvivalStats):
            return NotImplemented
        return SurvivalStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __radd__(self, other: object) -> SurvivalStats:
        # sum() starts from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @classmethod
    def aggregate(cls, stats: Iterable[SurvivalStats]) -> SurvivalStats:
        """Pool several layers (an empty iterable gives all-zero statistics)."""
        return sum(stats, cls())

    @property
    def changed(self) -> float:
        return self.n_changed / self.numel if self.numel else 0.0

    @property
    def below_half_step(self) -> float:
        return self.n_below_half_step / self.numel if self.numel else 0.0

    @property
    def retained(self) -> float:
        return self.dot / self.delta_sq if self.delta_sq > 0 else 0.0

    @property
    def cosine(self) -> float:
        denominator = math.sqrt(self.delta_sq * self.qdelta_sq)
        return self.dot / denominator if denominator > 0 else 0.0

    @property
    def rel_error(self) -> float:
        return math.sqrt(self.residual_sq / self.delta_sq) if self.delta_sq > 0 else 0.0

    @property
    def delta_norm(self) -> float:
        return math.sqrt(self.delta_sq)

    @property
    def qdelta_norm(self) -> float:
        return math.sqrt(self.qdelta_sq)

    def as_dict(self) -> dict[str, float]:
        """Plain floats for loggers: the seven ratios and norms, and ``numel``."""
        keys = ("changed", "below_half_step", "retained", "cosine", "rel_error", "delta_norm", "qdelta_norm")
        return {**{k: float(getattr(self, k)) for k in keys}, "numel": float(self.numel)}


def _check_reference(reference: QuantizedTensor, w0: Tensor, scheme: Scheme) -> None:
    if not isinstance(reference, QuantizedTensor):
        raise TypeError(
            f"`reference` must be a QuantizedTensor from quantize(w0, ...), got {type(reference).__name__}."
        )
    if reference.scheme != scheme or reference.shape != w0.shape:
        raise ValueError(
            f"`reference` was quantized with {reference.scheme} for shape {tuple(reference.shape)}, but the "
            f"check asks for {scheme} on shape {tuple(w0.shape)}; pass quantize(w0, scheme, block_size) with "
            "the same scheme and block size."
        )


@torch.no_grad()
def survival_stats(
    w0: Tensor,
    w1: Tensor,
    scheme: str | Scheme,
    block_size: int | None = None,
    reference: QuantizedTensor | None = None,
) -> SurvivalStats:
    """Statistics of ``Q(w1) - Q(w0)`` against ``ΔW = w1 - w0`` (both as stored, differenced in fp32).

    Streams over the weight in chunks: no full-size temporary is allocated (a non-contiguous input is
    made contiguous first), and codes are compared without dequantizing.

    Args:
        w0: The original weight, any floating dtype and shape.
        w1: The updated weight (e.g. the LoRA-merged weight), same shape; ``Q(w1)`` is rounded to its dtype.
        scheme: A name from :data:`~lit_unlearn.quantization.SCHEMES` or a :class:`Scheme`.
        block_size: Overrides the scheme's block (group) size.
        reference: ``quantize(w0, scheme, block_size)`` computed once, e.g. for a frozen LoRA base, so
            that ``w0`` is never re-quantized; it must come from this ``w0`` (not checked, to stay cheap).

    Raises:
        ValueError: for mismatched shapes, an unknown scheme or block size, a reference built with another
            scheme, or non-finite weights (a group that does not divide the rows takes ``fit_scheme``'s rule).
    """
    return _survival(w0, w1, None, scheme, block_size, reference)


@torch.no_grad()
def survival_stats_delta(
    w0: Tensor,
    delta: Tensor,
    scheme: str | Scheme,
    block_size: int | None = None,
    reference: QuantizedTensor | None = None,
) -> SurvivalStats:
    """:func:`survival_stats` of ``w0`` and ``w1 = w0 + delta`` without materialising ``w1``.

    ``w1`` is formed chunk by chunk as ``w0 + delta`` rounded once to ``w0``'s dtype, as an in-place merge
    ``weight += delta`` stores it; the statistics use the realised ``ΔW = w1 - w0``.
    """
    return _survival(w0, None, delta, scheme, block_size, reference)


def _survival(
    w0: Tensor,
    w1: Tensor | None,
    delta: Tensor | None,
    scheme: str | Scheme,
    block_size: int | None,
    reference: QuantizedTensor | None,
) -> SurvivalStats:
    other_name, other = ("w1", w1) if w1 is not None else ("delta", delta)
    check_weight(w0, "w0")
    check_weight(other, other_name)
    if other.shape != w0.shape:
        raise ValueError(
            f"`{other_name}` has shape {tuple(other.shape)} but `w0` has {tuple(w0.shape)}; they must match."
        )
    if other.device != w0.device:
        raise ValueError(
            f"`{other_name}` is on {other.device} but `w0` is on {w0.device}; move them to one device."
        )
    # The format this shape is stored in: GGUF fallbacks, mixtures' base types, RTN groups that divide the row.
    scheme = fit_scheme(get_scheme(scheme, block_size), w0.shape)
    if reference is not None:
        _check_reference(reference, w0, scheme)
        reference = reference.to(w0.device)
    codec = codec_for(scheme, w0.device)
    group_len = codec.group_len(w0.shape)
    flat0, flat_other = flat_view(w0), flat_view(other)
    n = flat0.numel()
    ws = Workspace.reused(n, group_len, w0.device)
    # [changed, below half step, <dQ,ΔW>, ||ΔW||², ||dQ||², ||dQ-ΔW||²]: per-chunk fp32 sums added in fp64.
    totals = torch.zeros(6, dtype=torch.float64, device=w0.device)
    # Q(W) is the dequantized weight in the model's dtype, as deployed: round fp32 decodes to it.
    dtype0, dtype1 = w0.dtype, other.dtype if delta is None else w0.dtype
    rounds = dtype0 != torch.float32 or dtype1 != torch.float32

    done = 0
    if _fused.applies(scheme, w0, other, n, reference is not None):
        fused = _fused.survival_sums(flat0, flat_other, delta is not None, scheme, group_len)
        if fused is not None:
            sums, done = fused
            totals += sums

    for chunk in ws.chunks(n, group_len):
        if chunk.stop <= done:
            continue
        x0 = load_chunk(flat0, chunk, ws, "w0")
        if delta is None:
            x1 = load_chunk(flat_other, chunk, ws, "w1")
        else:
            # w1 as peft's in-place merge `weight += delta` stores it: the sum in the promoted dtype,
            # rounded once to w0's dtype, then read in fp32.
            part = slice(chunk.start, chunk.stop)
            raw1 = ws.get("w1.raw", w0.dtype, chunk)
            merge(flat0[part].view_as(x0), flat_other[part].view_as(x0), out=raw1)
            x1 = raw1 if raw1.dtype == torch.float32 else ws.get("w1.x", torch.float32, chunk).copy_(raw1)
        d = torch.sub(x1, x0, out=ws.get("delta", torch.float32, chunk))

        if reference is None:
            enc0 = codec.encode(codec.prepare(x0, ws, chunk), ws, "w0", chunk)
        else:
            enc0 = load_reference(codec, reference, chunk, ws, "w0")
        enc1 = codec.encode(codec.prepare(x1, ws, chunk), ws, "w1", chunk)
        v0 = codec.values(enc0, ws, "w0", chunk)
        v1 = codec.values(enc1, ws, "w1", chunk)

        # Counts as sums of 0/1 floats: float signs are much cheaper than boolean masks on CPU.
        scratch = ws.get("scratch", torch.float32, chunk)
        changed = torch.sub(v1, v0, out=scratch).sign_().view(-1)
        n_changed = torch.dot(changed, changed)
        torch.abs(d, out=scratch)
        # 1.0 where half_step - |ΔW| > 0, i.e. |ΔW| < half_step.
        below = torch.sub(codec.half_step(enc0, ws, chunk), scratch, out=scratch).sign_().clamp_(min=0.0)
        n_below = below.sum()

        q1, q0 = codec.scale(v1, enc1), codec.scale(v0, enc0)
        if rounds:
            q1.copy_(q1.to(dtype1))
            q0.copy_(q0.to(dtype0))
        dq, d = q1.sub_(q0).view(-1), d.view(-1)
        dot, delta_sq, qdelta_sq = torch.dot(dq, d), torch.dot(d, d), torch.dot(dq, dq)
        residual = dq.sub_(d)
        residual_sq = torch.dot(residual, residual)
        totals += torch.stack([n_changed, n_below, dot, delta_sq, qdelta_sq, residual_sq]).double()

    n_changed, n_below, dot, delta_sq, qdelta_sq, residual_sq = totals.tolist()
    return SurvivalStats(n, round(n_changed), round(n_below), dot, delta_sq, qdelta_sq, residual_sq)
