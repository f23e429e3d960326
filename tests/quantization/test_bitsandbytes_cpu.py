"""What bitsandbytes decodes: the GPU semantics written out, and what its CPU kernels compute instead.

``dequantize_4bit_as_cuda`` is the reference every exactness test decodes with; here it is checked
against bitsandbytes' own pure-torch decoding and CUDA's constants. ``dequantize_4bit_as_cpu`` predicts
what ``bitsandbytes.functional.dequantize_4bit`` returns on *this* CPU (three kernels, chosen by shape,
block size and AVX-512); it is checked against the real call, so the deviation it documents for AVX-512
machines is measured, not assumed, wherever the suite runs.
"""

import pytest
import torch

from lit_unlearn.quantization import dequantize, quantize
from lit_unlearn.quantization.bnb_decode import (
    CPU_DECODERS,
    cpu_decoder,
    cpu_deviation,
    cpu_has_avx512,
    dequantize_4bit_as_cpu,
    dequantize_4bit_as_cuda,
    describe_cpu_dispatch,
)

SHAPES = [(64, 256), (33, 96), (4, 160), (16, 32), (3, 98), (7, 9), (2, 64), (3, 5, 64)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def _torch_fallback():
    """bitsandbytes' pure-torch 4-bit decoder (its "default" backend, which mirrors the CUDA kernel)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    return lambda packed, absmax, qt, bs, shape, dtype: _dequantize_4bit_compute(
        packed.reshape(-1), absmax, _get_4bit_code(qt, packed.device), bs, shape, dtype
    )


def _weight(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed + sum(shape))
    w = torch.randn(shape, generator=generator) * 0.02
    w.view(-1)[::7] = 1e-5  # many fp4 pattern-8 codes (0 < x <= 0.0026): the -0.0 / +0.0 case
    return w.to(dtype)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_semantics_equal_bitsandbytes_torch_decoder_but_for_the_sign_of_zero(bnb, quant_type, dtype, shape):
    w = _weight(shape, dtype)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    cuda = dequantize_4bit_as_cuda(packed, state.absmax, quant_type, 64, w.shape, dtype)
    fallback = _torch_fallback()(packed, state.absmax, quant_type, 64, w.shape, dtype)
    assert torch.equal(cuda, fallback), "values differ (±0 compare equal)"
    negative_zero = bits(cuda.float()).view(torch.int32) == torch.iinfo(torch.int32).min
    # ±0 explicitly: the only bit difference is fp4 pattern 8, -0.0 on a GPU and +0.0 in the fallback.
    assert torch.equal(bits(cuda.abs()), bits(fallback.abs()))
    if quant_type == "fp4":
        assert bool(negative_zero.any()), "the weight was built to contain fp4 pattern 8"
        assert not bool((bits(fallback.float()).view(torch.int32) == torch.iinfo(torch.int32).min).any())
    else:
        assert not bool(negative_zero.any()), "nf4 has one zero, +0.0"


def test_fp4_pattern_8_is_negative_zero_on_a_gpu_and_in_our_decoding(bnb):
    w = torch.tensor([1.0, 1e-4, -1e-4, 0.0] * 16)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="fp4")
    assert (packed[0, 0] & 15).item() == 8
    cuda = dequantize_4bit_as_cuda(packed, state.absmax, "fp4", 64, w.shape)
    assert cuda[1].item() == 0.0 and torch.signbit(cuda[1]).item(), "pattern 8 decodes to -0.0"
    assert not torch.signbit(cuda[3]).item(), "pattern 0 decodes to +0.0"
    # Quantized as the CUDA kernel does, pattern 8 goes to the small negative weight instead.
    ours = dequantize(quantize(w, "fp4"))
    assert ours[2].item() == 0.0 and torch.signbit(ours[2]).item(), "-1e-4: pattern 8, -0.0"
    assert not bool(torch.signbit(ours[[1, 3]]).any()), "1e-4 and 0.0: pattern 0, +0.0"
    for decoder in ("torch", "avx512-rows"):
        cpu = dequantize_4bit_as_cpu(packed, state.absmax, "fp4", 64, w.shape, decoder=decoder)
        assert not torch.signbit(cpu[1]).item(), f"{decoder} decodes pattern 8 to +0.0"


def test_cuda_constants_equal_bitsandbytes_code_tables(bnb):
    # Codes 0…15 in one block of absmax 1: each value is the table entry itself.
    for quant_type in ("nf4", "fp4"):
        codes = torch.arange(16, dtype=torch.uint8)
        packed = ((codes[::2] << 4) | codes[1::2]).unsqueeze(1)
        cuda = dequantize_4bit_as_cuda(packed, torch.ones(1), quant_type, 64, (16,))
        assert torch.equal(cuda, bnb.get_4bit_type(quant_type, device="cpu")), quant_type


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_size", [64, 128])
def test_cpu_dequantize_is_predicted_on_this_machine(bnb, quant_type, dtype, shape, block_size):
    w = _weight(shape, dtype)
    packed, state = bnb.quantize_4bit(w, blocksize=block_size, quant_type=quant_type)
    real = bnb.dequantize_4bit(packed, state).reshape(w.shape)
    predicted = dequantize_4bit_as_cpu(packed, state.absmax, quant_type, block_size, w.shape, dtype)
    assert torch.equal(bits(real), bits(predicted)), cpu_decoder(w.shape, block_size)

    cuda = dequantize_4bit_as_cuda(packed, state.absmax, quant_type, block_size, w.shape, dtype)
    deviation = cpu_deviation(w.shape, block_size, quant_type)
    assert torch.equal(real, cuda) == (deviation != "scales")
    assert torch.equal(bits(real), bits(cuda)) == (deviation is None)


@pytest.mark.parametrize("avx512", [True, False])
@pytest.mark.parametrize("block_size", [2048, 4096])
def test_bitsandbytes_large_block_switch_is_followed(bnb, monkeypatch, avx512, block_size):
    """bitsandbytes' Python flag ``_has_avx512`` sends blocks >= 2048 to its torch fallback; switching it
    exercises both of its branches on any CPU, and the prediction follows the real call."""
    from bitsandbytes.backends.cpu import ops

    monkeypatch.setattr(ops, "_has_avx512", avx512)
    w = _weight((12, 256), torch.float32)
    packed, state = bnb.quantize_4bit(w, blocksize=block_size, quant_type="fp4")
    real = bnb.dequantize_4bit(packed, state)
    expected_decoder = "torch" if avx512 else ("avx512-rows" if cpu_has_avx512() else "scalar")
    assert cpu_decoder(w.shape, block_size) == expected_decoder
    predicted = dequantize_4bit_as_cpu(packed, state.absmax, "fp4", block_size, w.shape)
    assert torch.equal(bits(real), bits(predicted))


@pytest.mark.parametrize("shape,block_size,expected", [
    ((32, 96), 64, "scales"),       # rows of 1.5 blocks
    ((16, 32), 64, "scales"),       # rows shorter than a block: all read block 0's scale
    ((8, 4096), 4096, None),        # large blocks go to the torch fallback
    ((64, 256), 64, None),          # whole blocks per row
    ((3, 98), 64, None),            # 98 % 16 != 0: the native scalar loop
    ((7, 9), 64, None),             # odd: the torch fallback
])
def test_avx512_deviation_by_shape(shape, block_size, expected):
    assert cpu_deviation(shape, block_size, "nf4", avx512=True) == expected
    assert cpu_deviation(shape, block_size, "nf4", avx512=False) is None
    zero_sign = "zero sign" if cpu_decoder(shape, block_size, avx512=True) != "scalar" else None
    assert cpu_deviation(shape, block_size, "fp4", avx512=True) == (expected or zero_sign)


def test_avx512_row_decoder_reads_the_scales_the_kernel_reads():
    # Two rows of 96 with block 64. Row 1 holds flat elements 96…191: 96…127 in block 1, 128…191 in
    # block 2. The per-row kernel reads absmax[1 * (96 // 64) + c // 64]: block 1 for columns 0…63 and
    # block 2 for 64…95, so columns 32…63 get block 1's scale instead of block 2's.
    codes = torch.full((2 * 96,), 15, dtype=torch.uint8)  # nf4 level +1.0 everywhere
    packed = ((codes[::2] << 4) | codes[1::2]).unsqueeze(1)
    absmax = torch.tensor([1.0, 2.0, 3.0])
    rows = dequantize_4bit_as_cpu(packed, absmax, "nf4", 64, (2, 96), decoder="avx512-rows")
    cuda = dequantize_4bit_as_cuda(packed, absmax, "nf4", 64, (2, 96))
    assert rows[0, :64].eq(1).all() and rows[0, 64:].eq(2).all()
    assert rows[1, :64].eq(2).all() and rows[1, 64:].eq(3).all()
    assert cuda[0, :64].eq(1).all() and cuda[0, 64:].eq(2).all()
    assert cuda[1, :32].eq(2).all() and cuda[1, 32:].eq(3).all()


def test_bad_arguments_name_the_value():
    packed = torch.zeros(8, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"'nf5'"):
        dequantize_4bit_as_cuda(packed, torch.ones(1), "nf5", 64, (16,))
    with pytest.raises(ValueError, match=r"2 scales.*16 elements in blocks of 64 need 1"):
        dequantize_4bit_as_cuda(packed, torch.ones(2), "nf4", 64, (16,))
    with pytest.raises(ValueError, match=r"8 packed bytes hold 16 codes; the shape needs 32"):
        dequantize_4bit_as_cuda(packed, torch.ones(1), "nf4", 64, (32,))
    with pytest.raises(ValueError, match=r"`decoder`.*'avx2'"):
        dequantize_4bit_as_cpu(packed, torch.ones(1), "nf4", 64, (16,), decoder="avx2")


def test_dispatch_line_names_capability_and_version():
    line = describe_cpu_dispatch()
    assert torch.backends.cpu.get_cpu_capability() in line and "bitsandbytes 0." in line
    assert set(CPU_DECODERS) == {"torch", "avx512-rows", "scalar"}
