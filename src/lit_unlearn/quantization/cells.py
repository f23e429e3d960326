"""Quantization cells: per weight, the interval of values that keep its code and its group's scale.

Every format here but the bf16/fp16 casts (which have no scale) and the GGUF K-quants quantizes a group
(block, row) of weights with a scale computed from the group's extremes — ``max |w|`` for the absmax
formats (nf4, fp4, LLM.int8, symmetric RTN, GGUF ``q8_0``), the signed element of largest ``|w|`` for GGUF
``q4_0``/``q5_0`` (``d = max / -8``), ``min(w)`` and ``max(w)`` for GGUF ``q4_1``/``q5_1`` (``d = (max -
min) / 15``, the minimum stored too), ``min(w, 0)`` and ``max(w, 0)`` for zero-point RTN — and then each
weight on its own, by a rounding that is monotone in the weight. Hold the extremes where they are and the
scale cannot change; then each other weight keeps its code exactly on an interval around its value, the
*cell*:

    lo ≤ w ≤ hi   ⇔   code(w) = code(w0)  and  the scale is unchanged,

computed here in the weight's own dtype, by bisection over its representable values, with the scheme's
own quantizer as the oracle (its rounding and tie rules, not a re-derivation of them). A weight that sets
its group's scale gets the one-point cell ``[w0, w0]``: moving a block's extreme moves its scale (``d``,
and for q4_1/q5_1 its minimum) and with it every code of the block, so a cell is the set of values one
weight may take *while its block's extremes stay put* — the same meaning as for nf4's absmax. For
q4_0/q5_0 the sign of ``d`` follows the first element of largest ``|w|``: an earlier weight of the other
sign may come up to that magnitude but not reach it (it would become the first maximum and flip ``d``).

The K-quants (``q4_k``, ``q5_k``, ``q6_k``) and the mixtures ``q4_k_m``/``q5_k_m`` have no cells: each
sub-block's scale and minimum come from a weighted least-squares search over all of its weights
(``make_qkx2_quants``), so moving any weight may move the scale; :func:`quantization_cell` refuses them.

Projecting a weight into its cell after every optimizer step (:class:`~lit_unlearn.callbacks.PreserveQuantization`)
trains a model whose full-precision weights move while ``quantize(W)`` stays bit-identical to
``quantize(W0)`` (Egashira et al., NeurIPS 2024, arXiv 2405.18137).

Example::

    >>> import torch
    >>> from lit_unlearn.quantization import quantize
    >>> from lit_unlearn.quantization.cells import quantization_cell
    >>> w0 = torch.randn(4, 64)
    >>> lo, hi = quantization_cell(w0, "nf4")
    >>> w1 = torch.maximum(torch.minimum(w0 + 0.1 * torch.randn_like(w0), hi), lo)
    >>> torch.equal(quantize(w1, "nf4").codes, quantize(w0, "nf4").codes)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.quantization.fit import fit_scheme
from lit_unlearn.quantization.functional import QuantizedTensor, check_weight, codec_for, dequantize, quantize
from lit_unlearn.quantization.gguf_formats import gguf_format
from lit_unlearn.quantization.schemes import Scheme, get_scheme

__all__ = ["check_cell_scheme", "push_across", "quantization_cell", "scale_setters"]

_INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
           torch.float64: torch.int64}


def _key(t: Tensor) -> Tensor:
    """Each value's rank among the dtype's representable values (monotone; ``-0.0`` and ``+0.0`` tie)."""
    bits = t.contiguous().view(_INT_OF[t.dtype]).long()
    width = torch.iinfo(_INT_OF[t.dtype]).bits
    return torch.where(bits < 0, -(bits + 2 ** (width - 1)), bits)


def _value(key: Tensor, dtype: torch.dtype) -> Tensor:
    width = torch.iinfo(_INT_OF[dtype]).bits
    bits = torch.where(key < 0, -key - 2 ** (width - 1), key)
    return bits.to(_INT_OF[dtype]).view(dtype)


def _groups(w: Tensor, group_len: int) -> tuple[Tensor, int]:
    flat = w.reshape(-1)
    pad = (-flat.numel()) % group_len
    # Zeros change neither max |w| nor min(w, 0) / max(w, 0): the padded tail block keeps its scale.
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, group_len), flat.numel()


#: GGUF formats whose scale depends on every weight of a sub-block (a least-squares search): no cells.
_NO_CELLS = frozenset({"q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"})


def check_cell_scheme(scheme: Scheme, mixtures_only: bool = False) -> None:
    """Raise for a scheme without quantization cells (GGUF K-quants and the mixtures built on them)."""
    if scheme.name in _NO_CELLS and (scheme.family == "gguf_mixture" or not mixtures_only):
        raise ValueError(
            f"Scheme {scheme.name!r} has no quantization cells: a GGUF K-quant chooses each sub-block's scale "
            "and minimum by a least-squares search over all of its weights, so no weight can move on its own "
            "without moving them. Keep codes fixed under a legacy GGUF type ('q4_0', 'q4_1', 'q5_0', 'q5_1', "
            "'q8_0'), or under 'nf4', 'fp4', 'int8' or an RTN scheme."
        )


def scale_setters(w0: Tensor, scheme: str | Scheme, block_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(pinned, lower, upper)``: which weights set their group's scale, and the range the others must
    stay in for it to hold (``[-max|w|, max|w|]``, ``[min(w), max(w)]`` for q4_1/q5_1, or
    ``[min(w, 0), max(w, 0)]`` with a zero point).

    The scheme is first fitted to ``w0``'s shape (:func:`~lit_unlearn.quantization.fit_scheme`).

    Raises:
        ValueError: for a GGUF K-quant or mixture (see :func:`check_cell_scheme`).
    """
    scheme = get_scheme(scheme, block_size)
    check_cell_scheme(scheme, mixtures_only=True)  # a mixture is refused whatever this weight's type
    check_weight(w0, "w0")
    scheme = fit_scheme(scheme, w0.shape)
    check_cell_scheme(scheme)  # a K-quant on rows of 576 is stored as q5_0, which has cells
    groups, n = _groups(w0.detach(), codec_for(scheme, w0.device).group_len(w0.shape))
    rows = torch.arange(groups.shape[0], device=w0.device)
    pinned = torch.zeros(groups.shape, dtype=torch.bool, device=w0.device)
    if scheme.family == "half":
        # A cast has no scale: nothing is pinned, and only the dtype's range bounds the search.
        largest = torch.finfo(w0.dtype).max
        upper = torch.full_like(groups, largest)
        lower = -upper
    elif scheme.family == "rtn" and not scheme.symmetric:
        low, at_low = groups.min(dim=1)
        high, at_high = groups.max(dim=1)
        pinned[rows, at_low] = low < 0
        pinned[rows, at_high] |= high > 0
        lower = low.clamp(max=0)[:, None].expand_as(groups)
        upper = high.clamp(min=0)[:, None].expand_as(groups)
    elif scheme.family == "gguf" and gguf_format(scheme.name).has_min:  # q4_1, q5_1 (K-quants have no cells)
        # ggml's block minimum and maximum, not clamped to include 0; the first of each on ties.
        low, at_low = groups.min(dim=1)
        high, at_high = groups.max(dim=1)
        pinned[rows, at_low] = True
        pinned[rows, at_high] = True
        lower = low[:, None].expand_as(groups)
        upper = high[:, None].expand_as(groups)
    else:
        magnitude, at_max = groups.abs().max(dim=1)
        pinned[rows, at_max] = True
        upper = magnitude[:, None].expand_as(groups)
        lower = -upper
        if scheme.name in ("q4_0", "q5_0"):
            # d = max / -8 takes the sign of the first element of largest |w|: an earlier weight reaching
            # that magnitude with the other sign would flip d, so it stops one representable value short.
            first = torch.arange(groups.shape[1], device=w0.device)[None, :] < at_max[:, None]
            negative = groups[rows, at_max] < 0
            inside = _value(_key(upper.contiguous()) - 1, groups.dtype).clamp(min=0)
            upper = torch.where(first & negative[:, None], inside, upper)
            lower = torch.where(first & ~negative[:, None], -inside, lower)
    shape = w0.shape
    return tuple(t.reshape(-1)[:n].reshape(shape) for t in (pinned, lower, upper))  # type: ignore[return-value]


@torch.no_grad()
def quantization_cell(
    w0: Tensor, scheme: str | Scheme, block_size: int | None = None, margin: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` in ``w0``'s dtype and shape: the weights ``W`` with ``lo ≤ W ≤ hi`` quantize to exactly
    the codes and scales of ``quantize(w0)`` (for every element at once), and no wider interval does.

    With ``margin > 0`` each edge moves inward by ``margin · |edge|`` (at least the dtype's smallest
    normal, so nothing is parked among subnormals, which a GPU's fast math flushes to zero; at most an
    eighth of the cell's width, so that 8-bit grids, whose cells near a block's maximum are only about
    2^-7 of it wide, keep three quarters of each cell to move in): a weight on
    the new edge keeps its code even when the deployment computes ``w / absmax`` with a relative error
    below ``margin`` (a scale, weight or reciprocal rounded otherwise). A weight whose ``w0`` lies outside
    that narrower cell, already that close to an edge, gets ``lo = hi = w0``: it stays where it is, so
    under any such error its code is whatever the original's is.

    Cost: about ``2 · (bits of the dtype)`` quantizations of ``w0`` (64 for fp32), once.

    Raises:
        ValueError: for a GGUF K-quant or mixture, which has no cells (:func:`check_cell_scheme`).
    """
    if not margin >= 0.0:
        raise ValueError(f"`margin` must be a non-negative fraction of the edge, got {margin!r}.")
    scheme = get_scheme(scheme, block_size)
    pinned, lower, upper = scale_setters(w0, scheme)
    scheme = fit_scheme(scheme, w0.shape)
    w0 = w0.detach().contiguous()
    codes0 = quantize(w0, scheme).codes
    key0 = _key(w0)

    def keeps(key: Tensor) -> Tensor:
        candidate = torch.where(pinned, w0, _value(key, w0.dtype))
        return quantize(candidate, scheme).codes == codes0

    bounds = []
    for limit in (upper.to(w0.dtype), lower.to(w0.dtype)):
        good = key0.clone()
        bad = _key(limit.contiguous())
        at_limit = keeps(bad)
        good = torch.where(at_limit, bad, good)
        # Invariant: `good` keeps the code, `bad` does not (or equals good); halve the gap until they meet.
        while True:
            gap = (bad - good).abs()
            open_ = (gap > 1) & ~at_limit
            if not bool(open_.any()):
                break
            middle = good + (bad - good) // 2
            ok = keeps(middle)
            good = torch.where(open_ & ok, middle, good)
            bad = torch.where(open_ & ~ok, middle, bad)
        bounds.append(torch.where(pinned, w0, _value(good, w0.dtype)))
    hi, lo = bounds
    return _narrowed(w0, lo, hi, margin) if margin > 0 else (lo, hi)


def _narrowed(w0: Tensor, lo: Tensor, hi: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """``[lo, hi]`` moved inward by ``margin · |edge|`` (at least the smallest normal, at most an eighth of
    the cell's width), in fp64, each new edge rounded to ``w0``'s dtype towards the inside; ``[w0, w0]``
    where ``w0`` is not inside it."""
    floor = torch.finfo(w0.dtype).tiny
    most = (hi.double() - lo.double()) / 8
    target_lo = lo.double() + torch.minimum(lo.double().abs() * margin, most).clamp(min=floor)
    target_hi = hi.double() - torch.minimum(hi.double().abs() * margin, most).clamp(min=floor)
    inner_lo, inner_hi = target_lo.to(w0.dtype), target_hi.to(w0.dtype)
    # Round to nearest may have stepped outward: one representable value inward where it did.
    inner_lo = torch.where(inner_lo.double() < target_lo, _value(_key(inner_lo) + 1, w0.dtype), inner_lo)
    inner_hi = torch.where(inner_hi.double() > target_hi, _value(_key(inner_hi) - 1, w0.dtype), inner_hi)
    x0 = w0.double()
    inside = (inner_lo.double() <= x0) & (x0 <= inner_hi.double())
    return torch.where(inside, inner_lo, w0), torch.where(inside, inner_hi, w0)


def _code_range(scheme: Scheme) -> tuple[int, int]:
    """The codes a scheme stores (as :class:`~lit_unlearn.quantization.QuantizedTensor` holds them)."""
    if scheme.family == "bnb4":
        return 0, 15
    if scheme.family == "llm_int8" or scheme.name == "q8_0":
        return -127, 127
    if scheme.family == "gguf":
        return 0, 2**scheme.bits - 1
    if scheme.family == "rtn":
        top = 2 ** (scheme.bits - 1) - 1
        return (-top, top) if scheme.symmetric else (0, 2**scheme.bits - 1)
    raise ValueError(
        f"Scheme {scheme.name!r} has no integer grid to push a weight across; choose a legacy GGUF type "
        "('q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0'), 'nf4', 'fp4', 'int8' or an RTN scheme."
    )


@torch.no_grad()
def push_across(
    w0: Tensor, w: Tensor, scheme: str | Scheme, share: float, block_size: int | None = None
) -> tuple[Tensor, int]:
    """``w`` with the ``share`` of its weights that an update ``w - w0`` moved closest to a cell edge, but not
    across it, pushed across: the inverse of projecting into the cells, and MANSU's magnitude floor
    (arXiv 2605.15138) made sparse.

    Quantizing ``w`` rounds most of a small update back: a weight keeps ``w0``'s code unless the update
    crossed the edge between its level and the next. Among the weights whose code ``Q(w)`` still equals
    ``Q(w0)``'s and whose update is not zero, those with the largest ``|w - w0|`` against half the step to the
    neighbouring level in the update's direction are moved to an eighth of a step beyond the edge between the
    two levels (their midpoint), into the neighbouring level's cell, the direction the update took them. The move never changes a group's scale: a push that would (a weight that sets or
    would exceed its group's extremes, a level at the end of the grid) is not made, and a group whose codes
    the pushes would change otherwise keeps ``w`` as it is. Every other weight keeps ``w``.

    Returns:
        The pushed weight (``w``'s dtype and shape; a new tensor) and the number of weights pushed.

    Raises:
        ValueError: for ``share`` outside ``[0, 1]``, different shapes, or a scheme without an integer grid
            with cells (bf16/fp16 casts, GGUF K-quants and mixtures).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"`share` must be a fraction of the weights in [0, 1], got {share!r}.")
    if w.shape != w0.shape:
        raise ValueError(f"`w` has shape {tuple(w.shape)} but `w0` has {tuple(w0.shape)}; pass the same layer's weights.")
    scheme = get_scheme(scheme, block_size)
    pinned, lower, upper = scale_setters(w0, scheme)  # refuses K-quants and mixtures with their message
    scheme = fit_scheme(scheme, w0.shape)
    low_code, high_code = _code_range(scheme)
    w0f, wf = w0.detach().float(), w.detach().float()
    update = wf - w0f
    q0, q = quantize(w0f, scheme), quantize(wf, scheme)
    if share == 0.0:
        return w.detach().clone(), 0
    level = dequantize(q).float()

    def decoded(codes: Tensor) -> Tensor:
        return dequantize(QuantizedTensor(codes.to(q.codes.dtype), q.scales, q.zero_points, scheme, torch.float32))

    codes = q.codes.long()
    up = decoded((codes + 1).clamp(low_code, high_code))
    down = decoded((codes - 1).clamp(low_code, high_code))
    # The neighbouring level in the update's direction (a code step may go down in value, as for q4_0 with d < 0).
    toward = torch.sign(update)
    neighbour = torch.where((up - level) * toward > 0, up, down)
    gap = neighbour - level
    candidate = (q.codes == q0.codes) & (update != 0) & (gap * toward > 0) & ~pinned
    target = level + gap * 0.625
    candidate &= (lower.float() < target) & (target < upper.float())
    # The update in units of half the local step: the largest updates lead, wherever a block's moved extremes
    # have shifted its grid (ranking by the distance left to the shifted edge favours weights whose grid moved,
    # not those the unlearning moved, and costs more of the model for the same forgetting).
    progress = torch.where(candidate, update.abs() / (gap.abs() / 2).clamp(min=torch.finfo(torch.float32).tiny), -1.0)
    k = min(int(round(share * w.numel())), int(candidate.sum()))
    if k == 0:
        return w.detach().clone(), 0
    chosen = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    chosen[progress.reshape(-1).topk(k).indices] = True
    chosen = chosen.view(w.shape)
    pushed = torch.where(chosen, target, wf).to(w.dtype)
    # Every push lands on the neighbouring level and nothing else moves; where a group's decoded values say
    # otherwise (a target rounded to the dtype, a scale that moved after all), that group keeps `w`.
    wrong = dequantize(quantize(pushed, scheme)).float() != torch.where(chosen, neighbour, level)
    group_len = codec_for(scheme, w.device).group_len(w.shape)
    bad_groups, n = _groups(wrong, group_len)
    keep_w = bad_groups.any(dim=1, keepdim=True).expand_as(bad_groups).reshape(-1)[:n].view(w.shape)
    chosen &= ~keep_w
    return torch.where(chosen, target, wf).to(w.dtype), int(chosen.sum())
