"""Survival statistics on hand-made tensors, against a dense reference, and their pooling."""

import math

import pytest
import torch

from lit_unlearn.quantization import (
    SCHEMES,
    SurvivalStats,
    dequantize,
    quantize,
    survival_stats,
    survival_stats_delta,
)
from lit_unlearn.quantization.bnb4 import NF4_LEVELS

KEYS = ["changed", "below_half_step", "retained", "cosine", "rel_error", "delta_norm", "qdelta_norm", "numel"]


def dense_reference(w0, w1, scheme):
    """The definitions, computed the obvious way in float64 on full tensors."""
    q0, q1 = quantize(w0, scheme), quantize(w1, scheme)
    dq = dequantize(q1).double() - dequantize(q0).double()
    d = w1.double() - w0.double()
    return {
        "changed": (q0.codes != q1.codes).double().mean().item(),
        "retained": ((dq * d).sum() / (d * d).sum()).item(),
        "cosine": torch.nn.functional.cosine_similarity(dq.flatten(), d.flatten(), dim=0).item(),
        "rel_error": ((dq - d).norm() / d.norm()).item(),
        "delta_norm": d.norm().item(),
        "qdelta_norm": dq.norm().item(),
    }


def int4_group(step_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One int4 group of 128: absmax 7 (so s = 1), the rest on level centres -6…6, all but the max moved."""
    w0 = torch.cat([torch.tensor([7.0]), torch.arange(-6.0, 7.0).repeat(10)[:127]])[None]
    delta = torch.full_like(w0, step_fraction)
    delta[0, 0] = 0.0
    return w0, w0 + delta


def test_update_below_half_a_step_vanishes():
    w0, w1 = int4_group(0.4)
    stats = survival_stats(w0, w1, "int4")
    assert stats.changed == 0.0 and stats.retained == 0.0 and stats.qdelta_norm == 0.0
    assert stats.below_half_step == 1.0
    assert stats.rel_error == pytest.approx(1.0)
    assert stats.delta_norm == pytest.approx(0.4 * math.sqrt(127))


def test_update_above_half_a_step_survives():
    w0, w1 = int4_group(0.6)
    stats = survival_stats(w0, w1, "int4")
    assert stats.n_changed == 127 and stats.changed == pytest.approx(127 / 128)
    assert stats.n_below_half_step == 1  # only the unmoved absmax
    assert stats.retained == pytest.approx(1 / 0.6)  # every moved weight jumps a whole step
    assert stats.cosine == pytest.approx(1.0)
    assert stats.rel_error == pytest.approx(0.4 / 0.6)


@pytest.mark.parametrize(("fraction", "survives"), [(0.4, False), (0.6, True)])
def test_nf4_levels(fraction, survives):
    # Block of 64: absmax 1 first, then every level but the top one, each moved up by a fraction of its gap.
    levels = torch.tensor(NF4_LEVELS)
    ranks = torch.arange(1, 15).repeat(5)[:63]
    w0 = torch.cat([torch.ones(1), levels[ranks]])
    gap = levels[ranks + 1] - levels[ranks]
    w1 = w0 + torch.cat([torch.zeros(1), fraction * gap])
    stats = survival_stats(w0, w1, "nf4")
    assert stats.n_changed == (63 if survives else 0)
    assert stats.retained == (pytest.approx(1 / fraction, rel=1e-5) if survives else 0.0)
    # Local step: mean distance to the two neighbouring levels.
    half_step = (levels[ranks + 1] - levels[ranks - 1]) / 4
    assert stats.n_below_half_step == 1 + int(((w1 - w0)[1:] < half_step).sum())


def test_uniform_population_retains_the_update_on_average():
    torch.manual_seed(0)
    w0 = torch.empty(2048, 128).uniform_(-6.5, 6.5)
    w0[:, 0] = 7.0  # s = 1 in every group
    delta = torch.full_like(w0, 0.1)
    delta[:, 0] = 0.0
    stats = survival_stats_delta(w0, delta, "int4")
    assert stats.changed == pytest.approx(0.1, abs=0.005)  # P(flip) = |Δ| / s
    assert stats.below_half_step == 1.0
    assert stats.retained == pytest.approx(1.0, abs=0.03)
    assert stats.cosine == pytest.approx(math.sqrt(0.1), abs=0.02)


def test_moving_an_absmax_changes_values_not_codes():
    torch.manual_seed(1)
    w0 = torch.randn(4, 64) * 0.05
    w1 = w0.clone()
    top = w0[0].abs().argmax()
    w1[0, top] += 1e-7 * w0[0, top].sign()
    q0, q1 = quantize(w0, "nf4"), quantize(w1, "nf4")
    assert torch.equal(q0.codes, q1.codes)
    assert (dequantize(q0)[0] != dequantize(q1)[0]).sum() > 32
    stats = survival_stats(w0, w1, "nf4")
    assert stats.changed == 0.0 and stats.qdelta_norm > 0.0


def test_fp4_zero_codes_count_as_a_change():
    # fp4 has two codes for 0.0. bitsandbytes' CUDA kernel (dQuantizeFP4) gives pattern 8 (-0.0) to
    # x in (-0.0026, 0) and pattern 0 to 0 and to x in (0, 0.0026]: a small negative update of a zero weight
    # changes the stored code without changing its value; a small positive one changes nothing.
    w0 = torch.cat([torch.ones(1), torch.zeros(63)])
    negative, positive = w0.clone(), w0.clone()
    negative[5], positive[5] = -1e-3, 1e-3
    stats = survival_stats(w0, negative, "fp4")
    assert stats.n_changed == 1
    assert stats.qdelta_norm < 1e-30 and stats.retained == pytest.approx(0.0, abs=1e-30)
    assert survival_stats(w0, positive, "fp4").n_changed == 0


def test_no_update_gives_zeros_not_nan():
    w = torch.randn(8, 128)
    stats = survival_stats(w, w.clone(), "nf4")
    assert stats.as_dict() == {
        "changed": 0.0, "below_half_step": 1.0, "retained": 0.0, "cosine": 0.0,
        "rel_error": 0.0, "delta_norm": 0.0, "qdelta_norm": 0.0, "numel": 1024.0,
    }


@pytest.mark.parametrize(
    ("scheme", "dtype"),
    [(name, torch.float32) for name in SCHEMES]
    + [(name, torch.bfloat16) for name in ("nf4", "fp4", "int8", "int4", "int4-asym")],
)
def test_matches_dense_reference(scheme, dtype):
    torch.manual_seed(2)
    w0 = (torch.randn(40, 256) * 0.02).to(dtype)
    w1 = (w0.float() + 3e-3 * torch.randn(40, 256)).to(dtype)
    stats = survival_stats(w0, w1, scheme)
    expected = dense_reference(w0, w1, scheme)
    for key, value in expected.items():
        assert getattr(stats, key) == pytest.approx(value, rel=1e-5, abs=1e-9), key
    # A precomputed Q(W0) gives the very same numbers.
    assert survival_stats(w0, w1, scheme, reference=quantize(w0, scheme)) == stats


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
def test_several_chunks_and_an_odd_tail(scheme):
    torch.manual_seed(3)
    for shape in [(600, 1000), (33, 33)]:  # two chunks of 2^19 elements; an odd tail
        w0 = torch.randn(shape) * 0.02
        delta = 1e-3 * torch.randn(shape)
        stats = survival_stats_delta(w0, delta, scheme, reference=quantize(w0, scheme))
        expected = dense_reference(w0, w0 + delta, scheme)
        assert stats == survival_stats(w0, w0 + delta, scheme)
        # fp32 sums over 6e5 elements in another order (chunks, thread count) agree to ~1e-5.
        for key, value in expected.items():
            assert getattr(stats, key) == pytest.approx(value, rel=1e-4), key


def test_pooling_equals_concatenation():
    torch.manual_seed(4)
    a0, b0 = torch.randn(16, 128), torch.randn(48, 128)
    a1, b1 = a0 + 0.05 * torch.randn_like(a0), b0 + 0.01 * torch.randn_like(b0)
    a, b = survival_stats(a0, a1, "nf4"), survival_stats(b0, b1, "nf4")
    both = survival_stats(torch.cat([a0, b0]), torch.cat([a1, b1]), "nf4")
    pooled = a + b
    assert sum([a, b]) == pooled == SurvivalStats.aggregate([a, b])
    counts = ("numel", "n_changed", "n_below_half_step")
    assert [getattr(pooled, k) for k in counts] == [getattr(both, k) for k in counts]
    for key in KEYS:
        assert getattr(pooled, key) == pytest.approx(getattr(both, key), rel=1e-6)
    assert pooled.changed == pytest.approx((a.changed * a.numel + b.changed * b.numel) / (a.numel + b.numel))
    assert SurvivalStats.aggregate([]).as_dict() == dict.fromkeys(KEYS, 0.0)
    assert list(pooled.as_dict()) == ["changed", "below_half_step", "retained", "cosine", "rel_error",
                                      "delta_norm", "qdelta_norm", "numel"]
    assert all(type(v) is float for v in pooled.as_dict().values())


def test_argument_errors():
    w = torch.randn(8, 128)
    with pytest.raises(ValueError, match=r"`w1` has shape \(8, 64\) but `w0` has \(8, 128\)"):
        survival_stats(w, w[:, :64], "nf4")
    mismatch = r"`reference` was quantized with Scheme\(name='nf4'.*asks for Scheme\(name='fp4'"
    with pytest.raises(ValueError, match=mismatch):
        survival_stats(w, w, "fp4", reference=quantize(w, "nf4"))
    with pytest.raises(ValueError, match="block_size=128"):
        survival_stats(w, w, "nf4", block_size=128, reference=quantize(w, "nf4"))
    with pytest.raises(TypeError, match="`reference` must be a QuantizedTensor"):
        survival_stats(w, w, "nf4", reference=w)
    with pytest.raises(ValueError, match="`delta` must be a floating-point tensor"):
        survival_stats_delta(w, torch.ones(8, 128, dtype=torch.long), "nf4")


@pytest.mark.parametrize(("scheme", "ulp_at_one"), [("bf16", 2.0**-7), ("fp16", 2.0**-10)])
def test_half_precision_copy_rounds_sub_ulp_updates_away(scheme, ulp_at_one):
    w0 = torch.ones(4, 64) + torch.arange(64) * 0.0  # every weight 1.0: ulp 2^-7 (bf16), 2^-10 (fp16)
    below = survival_stats(w0, w0 + 0.45 * ulp_at_one, scheme)
    assert below.changed == 0.0 and below.qdelta_norm == 0.0 and below.below_half_step == 1.0
    assert below.retained == 0.0 and below.delta_norm > 0
    above = survival_stats(w0, w0 + 0.55 * ulp_at_one, scheme)
    assert above.changed == 1.0 and above.below_half_step == 0.0
    assert above.qdelta_norm == pytest.approx(ulp_at_one * 16, rel=1e-6)  # one ulp on each of 256 weights
    q = quantize(w0 + 0.55 * ulp_at_one, scheme)
    dtype = torch.bfloat16 if scheme == "bf16" else torch.float16
    assert q.codes.dtype == torch.int16
    assert torch.equal(q.codes, (w0 + 0.55 * ulp_at_one).to(dtype).view(torch.int16)), "codes are bit patterns"
