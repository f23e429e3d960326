"""The AVX-512 nf4/fp4 and GGUF legacy kernels equal the torch.compile ones: the same codes and deployed weights bit for bit,
the same counts, the same fp64 sums up to their order; NaN and inf are refused as there; anything else
falls back."""

import logging
import os
import shutil

import pytest
import torch
from tests.quantization.test_fused import COUNTS, SUMS, adversarial, gguf_blocks

from lit_unlearn.quantization import _fused, _simd, get_scheme, survival_stats, survival_stats_delta

pytestmark = pytest.mark.skipif(
    "AVX512" not in torch.backends.cpu.get_cpu_capability()
    or shutil.which(os.environ.get("CC", "cc")) is None,
    reason="this CPU has no AVX-512 (or there is no C compiler): the torch.compile kernels run instead",
)


def test_the_kernels_build_where_a_compiler_and_avx512_are():
    assert _simd._library() is not None and not _simd._state["failed"], "the C kernels failed to build"


@pytest.fixture
def paths(monkeypatch):
    """Run a function through the AVX-512 kernels and through the torch.compile ones; count the former."""
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 0)
    monkeypatch.delenv("LIT_UNLEARN_COMPILE", raising=False)
    monkeypatch.setitem(_fused._state, "failed", False)
    calls = []
    for name in ("stats", "fake", "legacy_stats", "legacy_fake", "int8_stats"):
        real = getattr(_simd, name)
        monkeypatch.setattr(_simd, name, lambda *a, real=real: calls.append(a) or real(*a))

    def run(fn, *args, simd: bool, **kwargs):
        with monkeypatch.context() as m:
            m.setenv("LIT_UNLEARN_SIMD", "1" if simd else "0")
            before = len(calls)
            out = fn(*args, **kwargs)
            assert (len(calls) > before) == simd, "the path asked for ran"
            return out

    return run


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
@pytest.mark.parametrize("as_delta", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_statistics_equal_the_compiled_kernel(paths, scheme, as_delta, dtype):
    w0 = adversarial(scheme, 64, 1024, shift=0)
    w1 = adversarial(scheme, 64, 1024, shift=1)
    w1[8:16] = w0[8:16]  # rows that do not move
    w0[20, :64] = 1e-39  # a block under bitsandbytes' absmax floor
    w1[21, :64] = 0.0
    w0, w1 = w0.to(dtype), w1.to(dtype)
    if as_delta:  # a LoRA update is fp32 whatever the base's dtype; the merge rounds to the base's
        fn, args = survival_stats_delta, (w0, w1.float() - w0.float(), scheme)
    else:
        fn, args = survival_stats, (w0, w1, scheme)
    got, want = paths(fn, *args, simd=True), paths(fn, *args, simd=False)
    assert [getattr(got, k) for k in COUNTS] == [getattr(want, k) for k in COUNTS]
    assert 0 < got.n_changed < got.numel and 0 < got.n_below_half_step < got.numel
    for key in SUMS:
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12, abs=1e-30), key


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
@pytest.mark.parametrize("with_delta", [False, True])
def test_deployed_weights_are_bit_identical(paths, scheme, with_delta):
    w0 = adversarial(scheme, 64, 1024, shift=0)
    w0[3, :64] = -w0[3, :64]  # negative levels, fp4's -0.0 among them
    delta = (adversarial(scheme, 64, 1024, shift=1) - w0) if with_delta else None
    fitted = get_scheme(scheme)
    got = paths(_fused.fake_quantize_merged, w0, delta, fitted, 64, simd=True)
    want = paths(_fused.fake_quantize_merged, w0, delta, fitted, 64, simd=False)
    assert got.shape == want.shape and torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.signbit(got).any() and (got == 0).any()


LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


def edge_blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's edge blocks (±absmax ties, zeros, tiny negatives, .5 after scaling) and a moved copy."""
    w0 = gguf_blocks(0)
    w0[4, :32] = -w0[4, :32].abs()  # a block whose absmax is negative: Q4_0's d < 0, and its -0.0 products
    w0[5, :32] = 7.0  # a constant block: Q4_1's d = 0
    w1 = w0 + gguf_blocks(1) * 0.05
    w1[8:16] = w0[8:16]
    return w0, w1


@pytest.mark.parametrize("scheme", LEGACY)
@pytest.mark.parametrize("as_delta", [False, True])
def test_gguf_statistics_equal_the_compiled_kernel(paths, scheme, as_delta):
    w0, w1 = edge_blocks()
    fn, other = (survival_stats_delta, w1 - w0) if as_delta else (survival_stats, w1)
    got, want = paths(fn, w0, other, scheme, simd=True), paths(fn, w0, other, scheme, simd=False)
    assert [getattr(got, k) for k in COUNTS] == [getattr(want, k) for k in COUNTS]
    assert 0 < got.n_changed < got.numel and 0 < got.n_below_half_step < got.numel
    for key in SUMS:
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12, abs=1e-30), key


@pytest.mark.parametrize("scheme", LEGACY)
@pytest.mark.parametrize("with_delta", [False, True])
def test_gguf_deployed_weights_are_bit_identical(paths, scheme, with_delta):
    w0, w1 = edge_blocks()
    delta = (w1 - w0) if with_delta else None
    fitted = get_scheme(scheme)
    got = paths(_fused.fake_quantize_merged, w0, delta, fitted, 32, simd=True)
    want = paths(_fused.fake_quantize_merged, w0, delta, fitted, 32, simd=False)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    # and they are ggml's own: its reference quantizer (llama.cpp's libggml), decoded by the gguf package
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    from lit_unlearn.quantization.gguf_bytes import GGML_TYPE
    from tests.quantization.ggml_oracle import ggml_quantize

    merged = w0 if delta is None else w0 + delta
    ggml = gguf_dequantize(ggml_quantize(merged.numpy(), scheme), GGMLQuantizationType(GGML_TYPE[scheme]))
    assert torch.equal(got.view(torch.int32), torch.from_numpy(ggml.reshape(merged.shape).copy()).view(torch.int32))


@pytest.mark.parametrize("scheme", LEGACY)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gguf_non_finite_weights_are_refused_naming_their_block(paths, scheme, bad):
    w = torch.randn(16, 256)
    w[5, 40] = bad  # flattened element 1320: block [1312, 1344)
    with pytest.raises(ValueError, match=r"\[1312, 1344\)"):
        paths(survival_stats, w, torch.zeros_like(w), scheme, simd=True)
    with pytest.raises(ValueError, match=r"\[1312, 1344\)"):
        paths(_fused.fake_quantize_merged, torch.zeros_like(w), w, get_scheme(scheme), 32, simd=True)


@pytest.mark.parametrize("width", [576, 8208])  # SmolLM2's rows; and rows longer than the 4-bit kernels' buffer
@pytest.mark.parametrize("as_delta", [False, True])
def test_llm_int8_statistics_equal_the_compiled_kernel(paths, width, as_delta):
    torch.manual_seed(width)
    w0 = torch.randn(24, width) * 0.02
    w0[1, :5] = torch.tensor([1.0, 0.5 / 127, 1.5 / 127, -2.5 / 127, 3.5 / 127])  # codes on .5: ties to even
    w0[2] = 0.0  # a zero row: factor 0
    w0[3, 7] = 1.0001  # a value fp16 rounds
    w1 = w0 + torch.randn_like(w0) * 0.001
    w1[4:8] = w0[4:8]
    fn, other = (survival_stats_delta, w1 - w0) if as_delta else (survival_stats, w1)
    got, want = paths(fn, w0, other, "int8", simd=True), paths(fn, w0, other, "int8", simd=False)
    assert [getattr(got, k) for k in COUNTS] == [getattr(want, k) for k in COUNTS]
    assert 0 < got.n_changed < got.numel and 0 < got.n_below_half_step < got.numel
    for key in SUMS:
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12, abs=1e-30), key


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 70000.0])  # 70000: beyond fp16, as bitsandbytes casts
def test_llm_int8_non_finite_rows_are_refused_naming_them(paths, bad):
    w = torch.randn(16, 256)
    w[5, 40] = bad
    with pytest.raises(ValueError, match=r"\[1280, 1536\)"):
        paths(survival_stats, w, torch.zeros_like(w), "int8", simd=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_their_block(paths, bad):
    w = torch.randn(64, 256)
    w[10, 3] = bad  # flattened element 2563: block [2560, 2624)
    with pytest.raises(ValueError, match=r"NaN or inf values among flattened elements \[2560, 2624\)"):
        paths(survival_stats, w.clone(), w, "nf4", simd=True)
    with pytest.raises(ValueError, match=r"\[2560, 2624\)"):
        paths(survival_stats_delta, torch.zeros_like(w), w, "fp4", simd=True)
    with pytest.raises(ValueError, match=r"\[2560, 2624\)"):
        paths(_fused.fake_quantize_merged, w, None, get_scheme("nf4"), 64, simd=True)


def test_other_dtypes_and_groups_stay_compiled(paths):
    w0 = torch.randn(64, 256)
    assert not _simd.applies((w0.bfloat16(),), 64)
    assert not _simd.applies((w0, None), 8)  # not a multiple of 16 lanes
    assert not _simd.applies((w0,), 8192)  # longer than the kernel's group buffer
    assert _simd.applies((w0, None), 64)
    # bf16 runs through the compiled kernel, and says the same as fp32 where the weights are bf16 values.
    paths(survival_stats, w0.bfloat16(), (w0 * 1.01).bfloat16(), "nf4", simd=False)


def test_a_failing_build_falls_back_to_the_compiled_kernel_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(_simd._state, "lib", None)
    monkeypatch.setitem(_simd._state, "failed", False)
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 0)
    w0 = torch.randn(64, 256)
    with caplog.at_level(logging.WARNING):
        assert not _simd.applies((w0,), 64)
        stats = survival_stats(w0, w0 + 0.1 * torch.randn_like(w0), "nf4")
    assert stats.n_changed > 0
    assert caplog.text.count("Building the AVX-512 survival kernels failed") == 1
    assert not list(tmp_path.glob("simd-*.so"))


def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setitem(_simd._state, "lib", None)
    monkeypatch.setitem(_simd._state, "failed", False)
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path))
    first = _simd._build()
    stamp = first.stat().st_mtime_ns
    assert _simd._build() == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover temporary directory


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [64, 128])
def test_4bit_decode_equals_the_byte_table_decode(monkeypatch, quant_type, dtype, block_size):
    from lit_unlearn.quantization import bnb_decode

    g = torch.Generator().manual_seed(block_size)
    n = block_size * 40
    packed = torch.randint(0, 256, (n // 2,), dtype=torch.uint8, generator=g)
    # scales from tiny to beyond fp16 and near bf16's largest: casts that round, overflow and stay subnormal
    absmax = torch.logspace(-30, 38, n // block_size).float()
    absmax[::3] = torch.rand(absmax[::3].shape, generator=g)
    absmax[5] = 3.3999e38  # times the level 1.0: beyond bf16's largest, rounds to inf
    calls = []
    real = _simd.decode
    monkeypatch.setattr(_simd, "decode", lambda *a, **k: calls.append(a) or real(*a, **k))
    decode = bnb_decode.dequantize_4bit_as_cuda
    got = decode(packed, absmax, quant_type, block_size, (40, block_size), dtype)
    widened = decode(packed, absmax, quant_type, block_size, (40, block_size), dtype, widen_to=torch.float32)
    assert len(calls) == 2, "the AVX-512 decode ran"
    monkeypatch.setenv("LIT_UNLEARN_SIMD", "0")
    want = decode(packed, absmax, quant_type, block_size, (40, block_size), dtype)
    assert len(calls) == 2 and got.dtype == want.dtype == dtype and got.shape == want.shape
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]
    assert torch.equal(got.view(bits), want.view(bits))
    # rounded to the dtype, returned in fp32: .to(dtype).float() in one pass
    assert widened.dtype == torch.float32 and torch.equal(widened.view(torch.int32), want.float().view(torch.int32))
    assert torch.isinf(got.float()).any() or dtype == torch.float32  # the casts did overflow


def test_4bit_decode_leaves_non_finite_scales_to_torch(monkeypatch):
    from lit_unlearn.quantization import bnb_decode

    absmax = torch.ones(4)
    absmax[2] = float("inf")
    assert not _simd.decode_applies(torch.zeros(128, dtype=torch.uint8), absmax, 64, torch.float32)
