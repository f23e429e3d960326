"""K-quants (q4_k, q5_k, q6_k): bytes bit-exact with ggml's own quantizer, values with its dequantizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from lit_unlearn.quantization import fake_quantize, fit_scheme, from_gguf_bytes, gguf_bytes, quantize, survival_stats
from lit_unlearn.quantization import _simd
from lit_unlearn.quantization.gguf_bytes import GGML_TYPE

from .ggml_oracle import ggml_quantize

KQUANTS = ["q4_k", "q5_k", "q6_k"]


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ties = torch.randint(-8, 8, (4, 512), generator=g).float() * 0.125
    ties[0, :256] = 0.0  # a zero super-block
    ties[1, :32] = 0.3  # a constant sub-block
    ties[2] = 0.7  # constant rows
    ties[3, 100:140] = 0.0  # zero sub-blocks inside a block
    return {
        "mlp_rows": torch.randn(5, 1536, generator=g) * 0.05,  # 5 rows: not a multiple of 256
        "ties": ties,
        "positive": torch.rand(3, 256, generator=g),  # min clamps to 0
        "outliers": torch.randn(3, 512, generator=g) * torch.logspace(-4, 3, 512),
    }


WEIGHTS = _weights()


@pytest.fixture(params=["c", "torch"])
def path(request):
    """Both quantizers of each K-quant: ggml's C transcribed (where the C kernels load) and the torch port."""
    if request.param == "torch":
        with _simd.disabled():
            yield request.param
        return
    if not _simd.kquant_applies(torch.zeros(1, 256)):
        pytest.skip("the C kernels need a CPU with AVX-512 and a C compiler")
    yield request.param


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("name", KQUANTS)
def test_bytes_equal_ggml_and_values_equal_its_dequantizer(name, kind, path):
    w = WEIGHTS[kind]
    reference = ggml_quantize(w.numpy(), name)
    assert np.array_equal(gguf_bytes(w, name), reference)
    values = gguf_dequantize(reference, GGMLQuantizationType(GGML_TYPE[name])).reshape(w.shape)
    fq = fake_quantize(w, name)
    assert np.array_equal(fq.numpy(), values)
    assert torch.equal(from_gguf_bytes(reference, name, w.shape), fq)
    q = quantize(w, name)
    assert q.scheme.name == name and torch.equal(q.dequantize(), fq)
    assert q.scales.shape == (w.shape[0], w.shape[1] // (16 if name == "q6_k" else 32))
    assert (q.zero_points is None) == (name == "q6_k")


def test_sub_block_scales_are_the_stored_six_bit_scales_times_d():
    w = WEIGHTS["mlp_rows"]
    data = gguf_bytes(w, "q4_k").reshape(-1, 144)
    d = data[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    first_scale = (data[:, 4] & 63).astype(np.float32)  # sub-block 0 of each super-block
    scales = quantize(w, "q4_k").scales.reshape(-1, 8)[:, 0].numpy()
    assert np.array_equal(scales, d * first_scale)


@pytest.mark.parametrize(("name", "fallback"), [("q4_k", "q5_0"), ("q5_k", "q5_1"), ("q6_k", "q8_0")])
def test_rows_that_are_not_whole_super_blocks_take_llama_cpp_fallback(name, fallback):
    w = torch.randn(3, 576) * 0.05  # SmolLM2's hidden size: 2.25 super-blocks
    assert fit_scheme(name, w.shape).name == fallback
    assert quantize(w, name).scheme.name == fallback
    assert torch.equal(fake_quantize(w, name), fake_quantize(w, fallback))
    assert fit_scheme(name, (3, 100)).name == "fp16"  # not even 32-weight blocks: llama.cpp's F16
    assert fit_scheme(name, (3, 512)).name == name
    with pytest.raises(ValueError, match=r"shape \(3, 576\).*not a multiple of 256.*q5_0"):
        gguf_bytes(w, name)


def test_survival_of_k_quants_counts_codes_and_quiet_for_zero_update():
    w0 = torch.randn(16, 512) * 0.05
    assert survival_stats(w0, w0.clone(), "q4_k").changed == 0.0
    stats = survival_stats(w0, w0 + 0.01 * torch.randn_like(w0), "q5_k")
    assert stats.changed > 0.2 and stats.retained > 0.5


@pytest.mark.parametrize("name", KQUANTS)
def test_the_c_quantizer_equals_the_torch_port_on_many_blocks(name):
    # The C kernels run 8 (Q4_K/Q5_K) or 16 (Q6_K) sub-blocks per vector; over 512 super-blocks, zero,
    # constant, one-signed and outlier blocks among them, every code and scale equals the torch port's
    # (and both equal ggml's on the shapes above).
    from lit_unlearn.quantization.gguf_kquants import KQUANTIZERS, quantize_q4_k, quantize_q5_k, quantize_q6_k

    if not _simd.kquant_applies(torch.zeros(1, 256)):
        pytest.skip("the C kernels need a CPU with AVX-512 and a C compiler")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 256, generator=g) * 0.02
    x[0] = 0.0
    x[1, :32] = 0.25
    x[2] = x[2].abs()
    x[3] = -x[3].abs()
    x[4, ::5] *= 300
    x[5, 16:48] = 0.0
    port = {"q4_k": quantize_q4_k, "q5_k": quantize_q5_k, "q6_k": quantize_q6_k}[name]
    for got, want in zip(KQUANTIZERS[name](x), port(x)):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.equal(got.view(torch.int32), want.view(torch.int32))
