"""The compiled survival check equals the eager one: the same counts, the same sums up to their order."""

import logging

import pytest
import torch

from lit_unlearn.quantization import _fused, dequantize, quantize, survival_stats, survival_stats_delta
from lit_unlearn.quantization.bnb4 import levels_for


def _has_cxx() -> bool:
    import os
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


COUNTS = ("numel", "n_changed", "n_below_half_step")
SUMS = ("dot", "delta_sq", "qdelta_sq", "residual_sq")


@pytest.fixture
def compiled(monkeypatch):
    """Compile every check of this test (small tensors, several chunks), and report whether it did."""
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", 1 << 13)
    monkeypatch.setitem(_fused._state, "failed", False)
    monkeypatch.delenv("LIT_UNLEARN_COMPILE", raising=False)
    monkeypatch.setenv("LIT_UNLEARN_SIMD", "0")  # the torch.compile kernels; test_simd.py tests the other
    calls = []
    real = _fused.survival_sums
    monkeypatch.setattr(_fused, "survival_sums", lambda *a: calls.append(a) or real(*a))
    return calls


def eager(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("LIT_UNLEARN_COMPILE", "0")
        return fn(*args, **kwargs)


def adversarial(scheme: str, rows: int, cols: int, shift: int) -> torch.Tensor:
    """Weights on and next to every rounding boundary of ``scheme``, zero groups, and random values."""
    torch.manual_seed(shift)
    w = torch.randn(rows, cols) * 0.02
    if scheme in ("nf4", "fp4"):
        mid = levels_for(scheme, "cpu").midpoints
        up, down = torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1)
        # Where one weight sits on a midpoint (which rounds down), the other sits an ulp below it.
        edges = torch.cat([mid, up, down, down] if shift == 0 else [down, up, down, mid])
        block = torch.cat([torch.ones(1), edges, -mid[:3]])
        w.view(-1)[: 64 * 40] = block.repeat(40)  # absmax 1.0: x is the weight itself
    else:
        # Ties of round-to-nearest: absmax 7 gives int4 a step of exactly 1; halves round to even.
        ties = torch.arange(-6.5, 7.0, 0.5)
        group = torch.cat([torch.full((1,), 7.0), ties, torch.zeros(128 - 1 - ties.numel())])
        w[:4, :128] = group.roll(shift)
    w[-1] = 0.0  # a zero row (and zero blocks)
    return w


CASES = [
    # scheme, dtype, reference given, update given as a delta
    ("nf4", torch.float32, False, False),
    ("nf4", torch.bfloat16, True, True),
    ("fp4", torch.float32, True, False),
    ("fp4", torch.float16, False, True),
    ("int4", torch.float32, False, False),
    ("int4-asym", torch.bfloat16, False, False),
    ("int8", torch.float32, True, True),
    ("int8", torch.bfloat16, False, False),
]


@pytest.mark.parametrize(("scheme", "dtype", "with_reference", "as_delta"), CASES)
def test_compiled_check_equals_eager(compiled, monkeypatch, scheme, dtype, with_reference, as_delta):
    w0 = adversarial(scheme, 65, 1024, shift=0).to(dtype)
    w1 = adversarial(scheme, 65, 1024, shift=1).to(dtype)
    w1[8:16] = w0[8:16]  # some rows do not move at all
    if scheme in ("nf4", "fp4"):
        w0, w1 = w0.view(-1)[:-13], w1.view(-1)[:-13]  # and a shorter last block
    reference = quantize(w0, scheme) if with_reference else None
    if as_delta:
        delta = w1.float() - w0.float()
        args = (survival_stats_delta, w0, delta, scheme)
    else:
        args = (survival_stats, w0, w1, scheme)

    got = args[0](*args[1:], reference=reference)
    if _fused._state["failed"]:
        # Skipped only where there is no compiler at all; a kernel that fails to build or run where one
        # exists is a failure, not a skip.
        assert not _has_cxx(), "torch.compile failed although a C++ compiler is installed"
        pytest.skip("no C++ compiler here, so torch.compile cannot build the kernel; the checks ran eagerly")
    want = eager(monkeypatch, args[0], *args[1:], reference=reference)

    assert len(compiled) == 1  # the compiled path ran
    assert [getattr(got, k) for k in COUNTS] == [getattr(want, k) for k in COUNTS]
    assert 0 < got.n_changed < got.numel
    # The compiled check sums in fp64, the eager one in fp32 chunks: both near the fp64 truth.
    q0, q1 = dequantize(quantize(w0, scheme)).double(), dequantize(quantize(w1.to(w0.dtype), scheme)).double()
    dq, d = (q1 - q0).flatten(), (w1.to(w0.dtype).double() - w0.double()).flatten()
    truth = {"dot": dq @ d, "delta_sq": d @ d, "qdelta_sq": dq @ dq, "residual_sq": (dq - d) @ (dq - d)}
    for key in SUMS:
        assert getattr(got, key) == pytest.approx(truth[key].item(), rel=1e-7), key
        assert getattr(want, key) == pytest.approx(truth[key].item(), rel=1e-4), key


def test_non_finite_weights_are_reported(compiled):
    w = torch.randn(64, 256)
    w[10, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values among flattened elements \[\d+, \d+\)"):
        survival_stats(w, w.clone(), "nf4")
    w[10, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        survival_stats(torch.zeros_like(w), w, "int4")


def test_small_layers_doubles_and_cached_rtn_codes_stay_eager(monkeypatch):
    monkeypatch.delenv("LIT_UNLEARN_COMPILE", raising=False)
    monkeypatch.setitem(_fused._state, "failed", False)
    scheme = quantize(torch.zeros(64), "nf4").scheme
    big = torch.zeros(_fused.MIN_ELEMENTS)
    assert _fused.applies(scheme, big, big, big.numel(), True)
    assert not _fused.applies(scheme, big[:-1], big[:-1], big.numel() - 1, True)
    assert not _fused.applies(scheme, big.double(), big, big.numel(), True)
    int4 = quantize(torch.zeros(64), "int4").scheme
    assert _fused.applies(int4, big, big, big.numel(), False)
    assert not _fused.applies(int4, big, big, big.numel(), True)  # eager reads the cached codes faster
    monkeypatch.setenv("LIT_UNLEARN_COMPILE", "0")
    assert not _fused.applies(scheme, big, big, big.numel(), True)


def test_a_failing_compiler_falls_back_to_eager_once(compiled, monkeypatch, caplog):
    def no_compiler(*args):
        raise OSError("g++: not found")

    monkeypatch.setitem(_fused._state, "kernel", no_compiler)
    w0 = torch.randn(64, 256) * 0.02
    w1 = w0 + 1e-2 * torch.randn_like(w0)
    with caplog.at_level(logging.WARNING, logger=_fused.__name__):
        got = survival_stats(w0, w1, "nf4")
        again = survival_stats(w0, w1, "nf4")
    assert got == again == eager(monkeypatch, survival_stats, w0, w1, "nf4")
    message = (
        "Compiling the survival check failed (OSError: g++: not found); checks run eagerly, several times "
        "slower. Install a C++ compiler (gcc or clang) to compile them, or set LIT_UNLEARN_COMPILE=0 to skip "
        "trying."
    )
    assert [r.getMessage() for r in caplog.records] == [message]
    assert _fused._state["failed"]


def gguf_blocks(shift: int) -> torch.Tensor:
    """Random weights with ggml's edge blocks: ±absmax ties (Q4_0/Q5_0 take the first), zero blocks, a
    block of tiny negatives (codes 0 decode to +0.0), and codes on .5 after scaling (trunc, roundf ties)."""
    torch.manual_seed(shift)
    w = torch.randn(64, 512) * 0.02
    w[0, :32] = torch.linspace(-1, 1, 32)
    w[0, 32:64] = torch.linspace(1, -1, 32)
    w[1, :32] = 0.0
    w[1, 32:64] = -1e-30
    w[2, :32] = torch.arange(32) - 15.5
    w[3, :32] = (torch.arange(32) - 16.0) * 127.0 / 16.0 + 0.5
    return w


@pytest.mark.parametrize(("scheme", "dtype", "with_reference", "as_delta"), [
    ("q4_0", torch.float32, False, False),
    ("q4_0", torch.bfloat16, True, True),
    ("q4_1", torch.float32, True, True),
    ("q4_1", torch.float16, False, False),
    ("q5_0", torch.float32, True, False),
    ("q5_1", torch.bfloat16, False, True),
    ("q8_0", torch.float32, False, True),
    ("q8_0", torch.bfloat16, True, False),
])
def test_compiled_gguf_check_equals_eager(compiled, monkeypatch, scheme, dtype, with_reference, as_delta):
    w0, w1 = gguf_blocks(0).to(dtype), (gguf_blocks(0) + gguf_blocks(1) * 0.05).to(dtype)
    w1[8:16] = w0[8:16]
    reference = quantize(w0, scheme) if with_reference else None
    fn, other = (survival_stats_delta, w1.float() - w0.float()) if as_delta else (survival_stats, w1)
    got = fn(w0, other, scheme, reference=reference)
    if _fused._state["failed"]:
        assert not _has_cxx(), "torch.compile failed although a C++ compiler is installed"
        pytest.skip("no C++ compiler here; the checks ran eagerly")
    want = eager(monkeypatch, fn, w0, other, scheme, reference=reference)
    assert len(compiled) == 1
    assert [getattr(got, k) for k in COUNTS] == [getattr(want, k) for k in COUNTS]
    assert 0 < got.n_changed < got.numel
    for key in SUMS:
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-4), key


@pytest.mark.parametrize("scheme", ["q4_0", "q4_1", "q5_0", "q8_0"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_compiled_gguf_check_reports_non_finite_weights(compiled, scheme, bad):
    w = torch.randn(16, 256)
    w[5, 40] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        survival_stats(w, torch.zeros_like(w), scheme)
