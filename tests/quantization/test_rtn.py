"""Round-to-nearest int-k: the formula, its grid, its edge cases, and fake == dequantize(quantize)."""

import pytest
import torch

from lit_unlearn.quantization import SCHEMES, dequantize, fake_quantize, get_scheme, quantize


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fake_quantize_is_dequantize_of_quantize(name, dtype):
    torch.manual_seed(0)
    w = (torch.randn(24, 256) * 0.05).to(dtype)
    w[2, :128] = 0  # a zero group
    fq = fake_quantize(w, name)
    assert fq.shape == w.shape and fq.dtype == w.dtype
    expected = dequantize(quantize(w, name))
    assert torch.equal(fq.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))


def test_symmetric_formula_by_hand():
    # One group: max |w| = 7 so s = 1 and codes are round-half-to-even of w.
    w = torch.tensor([[7.0, -7.0, 0.5, 1.5, 2.5, -2.5, 3.49, -0.2]])
    q = quantize(w, "int4", block_size=8)
    assert q.codes.dtype == torch.int8
    assert q.codes.tolist() == [[7, -7, 0, 2, 2, -2, 3, 0]]
    assert q.scales.tolist() == [[1.0]]
    assert fake_quantize(w, "int4", block_size=8).tolist() == [[7.0, -7.0, 0.0, 2.0, 2.0, -2.0, 3.0, 0.0]]
    assert not torch.signbit(fake_quantize(w, "int4", block_size=8)[0, 7])  # +0.0, as a stored code 0 decodes


@pytest.mark.parametrize("bits", range(2, 8))
def test_symmetric_grid_properties(bits):
    torch.manual_seed(bits)
    name = f"int{bits}"
    w = torch.randn(16, 512)
    q = quantize(w, name)
    qmax = 2 ** (bits - 1) - 1
    assert q.scales.shape == (16, 4)
    assert int(q.codes.min()) >= -qmax and int(q.codes.max()) <= qmax
    # The group's absmax is on the grid (up to the rounding of s), and every weight within half a step.
    s = q.scales.repeat_interleave(128, dim=1)
    fq = fake_quantize(w, name)
    assert ((fq - w).abs() <= s / 2 * (1 + 1e-6)).all()
    group_max = fq.abs().view(16, 4, 128).amax(-1)
    torch.testing.assert_close(group_max, w.abs().view(16, 4, 128).amax(-1), rtol=1e-6, atol=0)
    assert torch.equal(fake_quantize(-w, name), -fq)


def test_per_channel_and_rtn8():
    torch.manual_seed(0)
    w = torch.randn(8, 300)
    q = quantize(w, "int4", block_size=-1)
    assert q.scales.shape == (8, 1)
    assert torch.allclose(q.scales[:, 0], w.abs().amax(1) / 7)
    q8 = quantize(w, "rtn8", block_size=100)
    assert q8.scales.shape == (8, 3) and int(q8.codes.abs().max()) == 127


def test_asymmetric_zero_point():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 15.0], [-1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0]])
    q = quantize(w, "int4-asym", block_size=8)
    assert q.codes.dtype == torch.uint8 and q.zero_points.dtype == torch.uint8
    assert q.scales[:, 0].tolist() == [1.0, pytest.approx(5 / 15)]
    assert q.zero_points[:, 0].tolist() == [0, 3]
    fq = fake_quantize(w, "int4-asym", block_size=8)
    assert torch.equal(fq[0], w[0])
    assert fq[1, 1].item() == 0.0  # zero is always representable
    assert int(q.codes.max()) <= 15
    # All-positive and all-negative groups still use the full range with zero included.
    pos = quantize(torch.linspace(1, 2, 64)[None], "int3-asym", block_size=64)
    assert pos.zero_points.item() == 0 and int(pos.codes.max()) == 7


def test_zero_groups_and_signed_zero():
    w = torch.zeros(2, 128)
    w[1, 5] = -1e-3
    w[1, 6] = 7e-3
    for name in ("int4", "int4-asym", "int8", "rtn8"):
        fq = fake_quantize(w, name)
        assert torch.equal(fq[0], torch.zeros(128)) and not torch.signbit(fq[0]).any()
        assert torch.equal(dequantize(quantize(w, name)).view(torch.int32), fq.view(torch.int32))


def test_rows_shorter_than_the_group_are_one_group():
    w = torch.randn(4, 64)
    assert quantize(w, "int4").scales.shape == (4, 1)
    assert torch.equal(fake_quantize(w, "int4"), fake_quantize(w, "int4", block_size=-1))


def test_a_group_that_does_not_divide_the_row_becomes_the_largest_divisor_below_it():
    w = torch.randn(4, 200)
    q = quantize(w, "int4")  # group 128 on 200 columns: 100, the largest divisor of 200 not above 128
    assert q.scheme.block_size == 100 and q.scales.shape == (4, 2)
    assert torch.equal(fake_quantize(w, get_scheme("int4")), fake_quantize(w, "int4", block_size=100))
    assert quantize(torch.randn(4, 97), "int4", block_size=48).scheme.block_size == 1  # a prime row


def test_shape_errors():
    with pytest.raises(ValueError, match="floating-point tensor"):
        quantize(torch.ones(4, 128, dtype=torch.int32), "int4")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(torch.tensor([[1.0, float("nan")] * 64]), "int4")
    with pytest.raises(ValueError, match="NaN or inf"):
        fake_quantize(torch.tensor([1.0, float("inf")] * 64), "nf4")


def test_quantized_tensor_to_and_float64():
    w = torch.randn(4, 128, dtype=torch.float64)
    q = quantize(w, "int4-asym")
    moved = q.to("cpu")
    assert moved.zero_points is not None and torch.equal(moved.codes, q.codes)
    assert dequantize(moved).dtype == torch.float64
    with pytest.raises(ValueError, match="no bitsandbytes counterpart"):
        q.to_bitsandbytes()
