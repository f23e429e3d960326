"""Quantization cells: inside, every scheme's codes and scales stay bit-identical; one step out, they do not."""

import pytest
import torch

from lit_unlearn.quantization import SCHEMES, fake_quantize, quantize
from lit_unlearn.quantization.cells import _key, _value, quantization_cell, scale_setters

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NO_CELLS = ("q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m")
CELL_SCHEMES = [name for name in SCHEMES if name not in NO_CELLS]


def _step(t: torch.Tensor, direction: int) -> torch.Tensor:
    """The next representable value up (+1) or down (-1) in ``t``'s own dtype."""
    return _value(_key(t) + direction, t.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", CELL_SCHEMES)
def test_anything_inside_the_cell_keeps_codes_and_scales(scheme, dtype):
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(12, 256, generator=g) * 0.02).to(dtype)
    w0[3] = 0.0  # a zero group
    lo, hi = quantization_cell(w0, scheme)
    assert lo.dtype == hi.dtype == dtype and bool((lo <= w0).all() and (w0 <= hi).all())
    q0 = quantize(w0, scheme)
    for trial in range(4):
        # Corners of the cells (all at lo, all at hi) and random points inside them.
        if trial == 0:
            w1 = lo.clone()
        elif trial == 1:
            w1 = hi.clone()
        else:
            noise = (torch.randn(w0.shape, generator=g) * 0.05).to(dtype)
            w1 = torch.maximum(torch.minimum(w0 + noise, hi), lo)
        q1 = quantize(w1, scheme)
        assert torch.equal(q1.codes, q0.codes) and torch.equal(q1.scales, q0.scales)
        if q0.zero_points is not None:
            assert torch.equal(q1.zero_points, q0.zero_points)
        assert torch.equal(fake_quantize(w1, scheme), fake_quantize(w0, scheme))
    if (scheme, dtype) in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert torch.equal(lo, w0) and torch.equal(hi, w0), "a weight already in the cast's dtype cannot move"
        return
    if (scheme, dtype) == ("fp16", torch.bfloat16):
        # bf16's 7 mantissa bits fit in fp16's 10: only weights below fp16's normal range share a code —
        # here the zero row (1/12 of the weights), free to take bf16's tiny values that round to fp16's 0.
        moving = hi > lo
        assert bool(moving[3].all()) and int(moving.sum()) < w0.numel() / 12 + 16
        return
    # The zero group cannot move (any value would set its scale); bf16 has few values inside an 8-bit cell.
    assert bool((hi > lo).float().mean() > 0.8), "most weights can move"


@pytest.mark.parametrize("scheme", ["nf4", "fp4", "int4", "int4-asym", "int8", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_cells_are_tight(scheme):
    """One representable step past a bound changes that weight's code (or its group's scale)."""
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(4, 128, generator=g) * 0.02
    lo, hi = quantization_cell(w0, scheme)
    pinned, lower, upper = scale_setters(w0, scheme)
    q0 = quantize(w0, scheme)
    flat_hi, flat_lo = hi.view(-1), lo.view(-1)
    checked = 0
    for i in torch.randperm(w0.numel(), generator=g)[:60].tolist():
        if pinned.view(-1)[i]:
            continue
        for bound, direction, limit in ((flat_hi, 1, upper.reshape(-1)), (flat_lo, -1, lower.reshape(-1))):
            if scheme.startswith("q") and bound[i] == limit[i]:
                # A GGUF block stores d (and its minimum) in fp16: one ulp past the block's extreme moves the
                # extreme but often not the stored d. The cell holds the extremes, so it ends there.
                continue
            w1 = w0.clone()
            w1.view(-1)[i] = _step(bound[i : i + 1], direction)
            q1 = quantize(w1, scheme)
            same = torch.equal(q1.codes, q0.codes) and torch.equal(q1.scales, q0.scales)
            assert not same, (i, direction)
            checked += 1
    assert checked > 50


def test_the_weight_that_sets_the_scale_is_pinned():
    w0 = torch.tensor([[0.1, -0.5, 0.2, 0.3] * 16])
    pinned, _, _ = scale_setters(w0, "nf4")
    assert pinned.sum() == 1 and pinned[0, 1]
    lo, hi = quantization_cell(w0, "nf4")
    assert lo[0, 1] == hi[0, 1] == -0.5
    assert bool((hi <= 0.5).all() and (lo >= -0.5).all())
    pinned, _, _ = scale_setters(torch.tensor([[0.5, -0.2, 0.1, 0.3] * 32]), "int4-asym")
    assert pinned.sum() == 2, "zero-point formats pin the minimum and the maximum of each group"


def test_key_is_monotone_and_invertible():
    for dtype in DTYPES:
        values = torch.tensor([-3.0, -1e-3, -0.0, 0.0, 1e-30, 2.5], dtype=dtype)
        keys = _key(values)
        assert bool((keys[1:] >= keys[:-1]).all()) and keys[2] == keys[3]
        assert torch.equal(_value(keys, dtype).abs(), values.abs())


@pytest.mark.parametrize("scheme", NO_CELLS)
def test_k_quants_have_no_cells(scheme):
    with pytest.raises(ValueError, match=rf"'{scheme}' has no quantization cells.*least-squares.*'q4_1'"):
        quantization_cell(torch.randn(2, 256), scheme)


def test_gguf_blocks_pin_their_extremes():
    """q4_1 pins each block's minimum and maximum (not clamped to 0); q4_0 its first element of largest |w|."""
    w0 = torch.linspace(0.1, 0.5, 32)[None, :].clone()
    pinned, lower, upper = scale_setters(w0, "q4_1")
    assert pinned[0, 0] and pinned[0, -1] and int(pinned.sum()) == 2
    assert float(lower.min()) == pytest.approx(0.1) and float(upper.max()) == pytest.approx(0.5)
    lo, hi = quantization_cell(w0, "q4_1")
    assert lo[0, 0] == hi[0, 0] == w0[0, 0] and bool((lo >= 0.1 - 1e-7).all())


def test_q4_0_earlier_weights_stop_short_of_flipping_the_scale():
    # The largest |w| is -0.5 at index 9: d = -0.5 / -8 = 0.0625, and 0.45 has the top code 15 (up to 0.5).
    # A weight before index 9 reaching +0.5 would be the first maximum and make d negative (every code of
    # the block changes); one after it may reach +0.5 exactly.
    w0 = torch.full((1, 32), 0.01)
    w0[0, 9] = -0.5
    w0[0, 3] = w0[0, 20] = 0.45
    lo, hi = quantization_cell(w0, "q4_0")
    assert float(hi[0, 20]) == 0.5 and float(hi[0, 3]) == float(_step(torch.tensor(0.5), -1))
    q0 = quantize(w0, "q4_0")
    for i in (3, 20):
        w1 = w0.clone()
        w1[0, i] = hi[0, i]
        assert torch.equal(quantize(w1, "q4_0").codes, q0.codes)
    w1 = w0.clone()
    w1[0, 3] = 0.5
    assert quantize(w1, "q4_0").scales[0, 0] < 0, "at +0.5 the earlier weight flips d: the cell must exclude it"
