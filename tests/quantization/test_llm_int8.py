"""LLM.int8's matmul in pure torch, against bitsandbytes' own ``Linear8bitLt`` and its arithmetic."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from lit_unlearn.quantization import dequantize, quantize
from lit_unlearn.quantization.llm_int8 import DEQUANT_SCALE, llm_int8_linear


def _bitsandbytes(linear: torch.nn.Linear) -> torch.nn.Module:
    int8 = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               has_fp16_weights=False, threshold=6.0)
    int8.load_state_dict(linear.state_dict())
    return int8.to("cpu").eval()  # eval: MatMul8bitLt, the kernel path CUDA always takes


# Widths up to 1024 keep bitsandbytes' CPU fallback (an fp32 matmul of the int8 codes, used without
# AVX-512) exact too, so the comparison holds on every CPU.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("features", [64, 1024])
def test_equals_bitsandbytes_linear8bitlt(dtype, bias, features):
    generator = torch.Generator().manual_seed(features)
    linear = torch.nn.Linear(features, 48, bias=bias)
    x = (torch.randn(3, 7, features, generator=generator) * 2).to(dtype)
    x[..., 3] *= 5  # an outlier column (|x| ≥ 6 in some rows)
    x[0, 2, 10] = 9.0  # and a single outlier
    q = quantize(linear.weight.detach(), "int8")
    reference = _bitsandbytes(linear)
    with torch.no_grad():
        expected = reference(x)
        got = llm_int8_linear(x, q.codes, q.scales, reference.bias)
    assert torch.equal(q.codes, reference.weight.data) and torch.equal(q.scales, reference.state.SCB)
    assert got.dtype == expected.dtype == dtype
    assert torch.equal(got, expected)


def test_documented_arithmetic_on_a_crafted_input():
    # Column 1 holds an outlier (7 ≥ 6): it is multiplied at 16-bit with the dequantized weight column,
    # and column 0 goes through int8: SCA = 0.5, CA = 127; CB = round(w · 127 / 2) = (64, 127), SCB = 2.
    x = torch.tensor([[0.5, 7.0]])
    q = quantize(torch.tensor([[1.0, 2.0]]), "int8")
    assert q.codes.tolist() == [[64, 127]] and q.scales.tolist() == [2.0]
    int8_part = torch.tensor(127 * 64, dtype=torch.int32) * (torch.tensor(0.5) * torch.tensor(2.0)) * DEQUANT_SCALE
    outlier_part = torch.tensor(7.0) * (torch.tensor(127.0) * 2.0 * 7.874015718698502e-3)
    assert llm_int8_linear(x, q.codes, q.scales).item() == (int8_part + outlier_part).item()
    # Without the outlier path (threshold 0), column 1 goes through int8 too and the row's scale is 7.
    assert llm_int8_linear(x, q.codes, q.scales, threshold=0.0).item() != (int8_part + outlier_part).item()


def test_activation_quantization_changes_the_output():
    # The true positive for simulating the whole matmul: weights-only int8 computes something else.
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=generator)
    x = torch.randn(5, 64, generator=generator)
    q = quantize(weight, "int8")
    weights_only = x @ dequantize(q).t()
    full = llm_int8_linear(x, q.codes, q.scales)
    assert not torch.equal(full, weights_only)
    assert (full - weights_only).norm() / weights_only.norm() < 0.02  # ...though close to it


def test_an_all_zero_row_gives_the_bias():
    q = quantize(torch.randn(4, 8), "int8")
    bias = torch.arange(4.0)
    out = llm_int8_linear(torch.zeros(2, 8), q.codes, q.scales, bias)
    assert torch.equal(out, bias.expand(2, 4))


def test_the_integer_product_is_exact_beyond_fp32s_range():
    # 2048 features: sums of int8 products reach 2048 · 127² > 2²⁴, where an fp32 matmul rounds. Inputs and
    # weights that are their own codes (integers with a 127 in every row) make the int32 product checkable.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(100, 128, (3, 2048), generator=generator).float()
    w = torch.randint(100, 128, (5, 2048), generator=generator).float()
    x[:, 0] = w[:, 0] = 127
    q = quantize(w, "int8")
    assert torch.equal(q.codes.float(), w) and torch.equal(q.scales, torch.full((5,), 127.0))
    acc = (x.long() @ w.long().t()).to(torch.int32)
    assert acc.max() > 2**24 and not torch.equal((x @ w.t()).to(torch.int32), acc)  # fp32 would round
    expected = acc * (torch.full((3, 1), 127.0) * q.scales.reshape(1, -1)) * DEQUANT_SCALE
    assert torch.equal(llm_int8_linear(x, q.codes, q.scales, threshold=0.0), expected)


@pytest.mark.parametrize("int_mm", [True, False], ids=["torch-int8-gemm", "fp32-slices"])
@pytest.mark.parametrize(("rows", "width", "out"), [(1, 576, 1536), (7, 1, 5), (3, 15, 9), (5, 16, 3),
                                                    (16, 577, 33), (4, 2100, 17)])
def test_int8_product_is_the_exact_integer_product(monkeypatch, int_mm, rows, width, out):
    from lit_unlearn.quantization.llm_int8 import int8_product

    if not int_mm:
        monkeypatch.delattr(torch, "_int_mm")
    g = torch.Generator().manual_seed(width)
    ca = torch.randint(-127, 128, (rows, width), dtype=torch.int8, generator=g)
    codes = torch.randint(-127, 128, (out, width), dtype=torch.int8, generator=g)
    codes[0] = 127  # the largest sums: |row · codes| up to 127² per feature
    ca[0] = 127
    got = int8_product(ca, codes)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), ca.long() @ codes.long().t())
    # a column view of wider codes, as a layer's outlier-free slice may be
    wide = torch.randint(-127, 128, (out, width + 3), dtype=torch.int8, generator=g)
    assert torch.equal(int8_product(ca, wide[:, 3:]).long(), ca.long() @ wide[:, 3:].long().t())
