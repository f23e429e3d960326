"""The compiled quantize-the-merge kernel of quantization-aware steps equals merge + fake_quantize bit for bit."""

from __future__ import annotations

import pytest
import torch

from lit_unlearn.quantization import _fused, fake_quantize, fit_scheme, get_scheme
from lit_unlearn.quantization.functional import codec_for
from lit_unlearn.quantization.merge import merge


CASES = [(name, dtype) for name in ("nf4", "fp4", "int4", "int3", "int8", "q4_0", "q4_1")
         for dtype in (torch.float32, torch.bfloat16)]
# One compiled variant each is enough for the rest of GGUF's legacy family (and a K-quant, which stays eager).
CASES += [(name, torch.float32) for name in ("q5_0", "q5_1", "q8_0", "q4_k")]


@pytest.mark.parametrize(("name", "dtype"), CASES)
def test_fused_fake_quantize_of_the_merge_is_the_eager_one(name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(96, 256, generator=g) * 0.02).to(dtype)
    w0[0, :64], w0[1, :64] = 0.0, -1e-30  # a zero block, and one of tiny negatives (fp4's -0.0, RTN's +0.0)
    # A block whose largest weight is positive gives Q4_0/Q5_0 a negative scale: its small weights decode to -0.0.
    w0[2, :32] = torch.linspace(1e-3, 2e-2, 32)
    delta = torch.randn(96, 256, generator=g) * 1e-3
    delta[3, :64] = -w0[3, :64].float()  # a block merged to zero
    delta[2, :32] = 0.0
    scheme = fit_scheme(get_scheme(name), w0.shape)
    got = _fused.fake_quantize_merged(w0, delta, scheme, codec_for(scheme, w0.device).group_len(w0.shape))
    if scheme.family == "llm_int8" or scheme.name == "q4_k":
        assert got is None  # LLM.int8 and the K-quants stay eager
        return
    want = fake_quantize(merge(w0, delta), scheme)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert got.dtype == dtype and torch.equal(got.view(bits), want.view(bits))


def test_fused_fake_quantize_refuses_non_finite_weights() -> None:
    w0 = torch.zeros(4, 64)
    w0[2, 5] = float("nan")
    with pytest.raises(ValueError):
        _fused.fake_quantize_merged(w0, torch.zeros(4, 64), get_scheme("nf4"), 64)
