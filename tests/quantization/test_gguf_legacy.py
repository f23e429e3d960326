"""Legacy GGUF formats (q8_0, q4_0, q4_1, q5_0, q5_1): codes, scales and mins bit-exact with ggml."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from lit_unlearn.quantization import (
    fake_quantize,
    from_gguf_bytes,
    get_scheme,
    gguf_bytes,
    quantize,
    survival_stats,
    survival_stats_delta,
)
from lit_unlearn.quantization.gguf_bytes import GGML_TYPE

from .ggml_oracle import ggml_quantize

LEGACY = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(-8, 8, (6, 64), generator=g).float() * 0.125  # many exact ties, exact halves
    ties[0, :32] = 0.5  # a constant block
    ties[1, 32:] = -0.25
    ties[2] = 0.0  # a row of zeros (d = -0.0 for q4_0 / q5_0)
    ties[3, :32] = -0.0
    return {
        "smollm2_rows": torch.randn(5, 576, generator=g) * 0.05,  # 576 columns, 5 rows (not 256)
        "wide": torch.randn(3, 2048, generator=g) * 0.02,
        "ties": ties,
        "outliers": torch.randn(4, 96, generator=g) * torch.tensor([1e-4, 1.0, 30.0, 1e3]).repeat_interleave(24),
    }


WEIGHTS = _weights()


def _decode_reference(data: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Codes, d and min straight from ggml's block bytes (``ggml-common.h`` layouts), independently of ours."""
    size = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}[name]
    blocks = data.reshape(-1, size)
    d = blocks[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    if name == "q8_0":
        return blocks[:, 2:].view(np.int8).astype(np.int64), d, None
    m = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32) if name in ("q4_1", "q5_1") else None
    qs = blocks[:, -16:].astype(np.int64)
    codes = np.concatenate([qs & 15, qs >> 4], axis=1)
    if name in ("q5_0", "q5_1"):
        at = 4 if m is not None else 2
        qh = blocks[:, at : at + 4].copy().view("<u4")[:, 0].astype(np.int64)
        codes |= ((qh[:, None] >> np.arange(32)) & 1) << 4
    return codes, d, m


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("name", LEGACY)
def test_codes_scales_and_mins_equal_ggml_and_gguf_numpy(name, kind):
    w = WEIGHTS[kind]
    reference = ggml_quantize(w.numpy(), name)
    numpy_port = gguf_quantize(w.numpy(), GGMLQuantizationType(GGML_TYPE[name])).reshape(reference.shape)
    if not (kind == "ties" and name in ("q4_0", "q5_0")):  # see the next test
        assert np.array_equal(numpy_port, reference)
    codes, d, m = _decode_reference(reference, name)

    q = quantize(w, name)
    assert q.scheme.name == name
    assert q.codes.dtype == (torch.int8 if name == "q8_0" else torch.uint8)
    assert np.array_equal(q.codes.reshape(-1, 32).numpy().astype(np.int64), codes)
    assert np.array_equal(q.scales.reshape(-1).numpy().view(np.int32), d.view(np.int32))  # -0.0 included
    if m is None:
        assert q.zero_points is None
    else:
        assert q.zero_points.dtype == torch.float32
        assert np.array_equal(q.zero_points.reshape(-1).numpy().view(np.int32), m.view(np.int32))

    assert np.array_equal(gguf_bytes(w, name), reference)
    values = gguf_dequantize(reference, GGMLQuantizationType(GGML_TYPE[name])).reshape(w.shape)
    fq = fake_quantize(w, name)
    assert np.array_equal(fq.numpy().view(np.int32), values.view(np.int32))
    assert torch.equal(from_gguf_bytes(reference, name, w.shape), fq)
    assert torch.equal(q.dequantize(), fq)


@pytest.mark.parametrize("name", ["q4_0", "q5_0"])
def test_exact_ties_follow_ggml_where_the_gguf_numpy_port_differs(name):
    # gguf.quants computes Q4_0/Q5_0 codes as x·id + 8.5 in float64 (emulating an FMA build); ggml's
    # ggml-base is built without FMA and rounds x·id to fp32 first. On values whose x·id lands on a
    # half, the two disagree; the file llama.cpp writes is ggml's.
    w = WEIGHTS["ties"]
    reference = ggml_quantize(w.numpy(), name)
    numpy_port = gguf_quantize(w.numpy(), GGMLQuantizationType(GGML_TYPE[name])).reshape(reference.shape)
    assert not np.array_equal(numpy_port, reference)
    assert np.array_equal(gguf_bytes(w, name), reference)


@pytest.mark.parametrize("name", LEGACY)
def test_non_fp32_weights_are_quantized_from_their_fp32_values(name):
    w = (torch.randn(4, 64) * 0.1).to(torch.bfloat16)
    assert torch.equal(quantize(w, name).codes, quantize(w.float(), name).codes)
    assert fake_quantize(w, name).dtype == torch.bfloat16


def test_q4_1_of_a_weight_on_the_q4_1_grid_is_that_weight():
    # The PAPER's case: a model shipped as Q4_1 and loaded in fp32 sits on the grid; Q(Q(W)) == Q(W).
    w = fake_quantize(torch.randn(64, 576) * 0.05, "q4_1")
    assert torch.equal(fake_quantize(w, "q4_1"), w)
    assert torch.equal(quantize(w, "q4_1").codes, quantize(fake_quantize(w, "q4_1"), "q4_1").codes)
    # Not every format has that property for other grids: Q4_0 moves the Q4_1 weight.
    assert not torch.equal(fake_quantize(w, "q4_0"), w)


def test_survival_sees_a_tiny_update_to_an_on_grid_q4_1_weight_revert():
    w0 = fake_quantize(torch.randn(32, 576) * 0.05, "q4_1")
    step = quantize(w0, "q4_1").scales.repeat_interleave(32, dim=1)
    tiny = 0.05 * step * torch.randn_like(w0).sign()  # a twentieth of a step: rounds back to W0
    stats = survival_stats(w0, w0 + tiny, "q4_1")
    # No code moves; what survives is the nudged block extremes rescaling each block (noise, not signal).
    assert stats.changed == 0.0 and stats.below_half_step == 1.0
    assert abs(stats.retained) < 0.1 and abs(stats.cosine) < 0.2

    large = 1.5 * step * torch.randn_like(w0).sign()  # a step and a half: codes move, the update lands
    stats = survival_stats_delta(w0, large, "q4_1")
    assert stats.changed > 0.5 and stats.below_half_step < 0.01 and stats.retained > 0.5


def test_half_step_is_half_the_block_scale():
    w0 = fake_quantize(torch.randn(4, 64), "q4_0")
    d = quantize(w0, "q4_0").scales.abs().repeat_interleave(32, dim=1)
    just_below, just_above = w0 + 0.49 * d, w0 + 0.51 * d
    assert survival_stats(w0, just_below, "q4_0").below_half_step == 1.0
    assert survival_stats(w0, just_above, "q4_0").below_half_step == 0.0


def test_reference_codes_are_reused():
    w0 = torch.randn(8, 64)
    w1 = w0 + 0.01 * torch.randn_like(w0)
    for name in ("q4_1", "q8_0"):
        ref = quantize(w0, name)
        assert survival_stats(w0, w1, name, reference=ref) == survival_stats(w0, w1, name)


def test_block_size_is_fixed_and_rows_must_be_whole_blocks():
    assert get_scheme("q4_1").block_size == 32 and get_scheme("q4_1", 32).name == "q4_1"
    with pytest.raises(ValueError, match=r"`block_size`=64 does not apply to 'q4_1'.*block_size=None"):
        get_scheme("q4_1", 64)
    with pytest.raises(ValueError, match=r"`symmetric`=True is not available for 'q4_1'"):
        get_scheme("q4_1", symmetric=True)
    with pytest.raises(ValueError, match=r"shape \(2, 100\).*not a multiple of 32"):
        gguf_bytes(torch.randn(2, 100), "q8_0")
    with pytest.raises(ValueError, match=r"'q4_2' is not a GGUF block format"):
        gguf_bytes(torch.randn(2, 64), "q4_2")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(torch.tensor([[1.0, float("nan")] * 16]), "q4_0")
    with pytest.raises(ValueError, match=r"needs 40 uint8 bytes"):
        from_gguf_bytes(np.zeros(39, np.uint8), "q4_1", (2, 32))
