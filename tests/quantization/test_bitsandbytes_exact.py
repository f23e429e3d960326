"""nf4 / fp4 / int8 are bit-identical to bitsandbytes: codes and scales as ``quantize_4bit`` computes them
here, decoded weights as bitsandbytes' CUDA kernel decodes them (the deployment), on every CPU.

fp4 is the CUDA kernel's rule (``dQuantizeFP4``), which bitsandbytes' CPU path does not follow on weights
at or next to a pivot, nor on the smallest weights, whose two zero patterns it swaps: there lit-unlearn is
compared with the transcribed kernel (``test_bitsandbytes_cuda_rule.py``), elsewhere with the CPU call."""

import pytest
import torch
from tests.quantization.test_bitsandbytes_cuda_rule import FP4_PIVOTS, kernel_codes

from lit_unlearn.quantization import BNB4_BLOCK_SIZES, dequantize, fake_quantize, quantize
from lit_unlearn.quantization.bnb4 import levels_for
from lit_unlearn.quantization.bnb_decode import dequantize_4bit_as_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Within this distance of a pivot, bitsandbytes' CPU midpoints (up to 14 ulps off the pivot) may decide
# otherwise; below the first pivot, CPU and GPU order the two zero patterns the other way round.
_PIVOT_BAND = 1e-6


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def unpacked(packed: torch.Tensor, n: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:n]


def fp4_disputed(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Where bitsandbytes' CPU fp4 may store another code than its CUDA kernel: ``|x|`` within
    :data:`_PIVOT_BAND` of a pivot, or below the first one (``x = w / absmax``)."""
    flat = w.reshape(-1).float()
    pad = (-flat.numel()) % block_size
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, block_size)
    x = (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)).reshape(-1)[: flat.numel()].abs()
    pivots = torch.tensor([float(p) for p in FP4_PIVOTS])
    near = (x[:, None] - pivots).abs().amin(dim=1) <= _PIVOT_BAND
    return near | (x <= pivots[0] + _PIVOT_BAND)


def assert_matches_bnb4(bnb, w: torch.Tensor, quant_type: str, block_size: int) -> None:
    """Codes and absmax equal ``quantize_4bit``'s (fp4: off the disputed weights, and the transcribed CUDA
    kernel's everywhere); decoded values equal what bitsandbytes' CUDA kernel decodes from them
    (:func:`dequantize_4bit_as_cuda`), bit for bit, fp4's ``-0.0`` included. Never compared with this
    CPU's ``dequantize_4bit``, whose kernel depends on the machine
    (``tests/quantization/test_bitsandbytes_cpu.py`` pins down what that one computes)."""
    packed, state = bnb.quantize_4bit(w, blocksize=block_size, quant_type=quant_type)

    q = quantize(w, quant_type, block_size)
    ours_packed, ours_absmax = q.to_bitsandbytes()
    if quant_type == "nf4":
        assert torch.equal(ours_packed, packed), "packed 4-bit codes differ"
    else:
        ours, cpu = unpacked(ours_packed, w.numel()), unpacked(packed, w.numel())
        agreed = ~fp4_disputed(w, block_size)
        assert torch.equal(ours[agreed], cpu[agreed]), "fp4 codes differ from the CPU's off the disputed weights"
        assert torch.equal(ours.long(), torch.from_numpy(kernel_codes(w, "fp4", block_size))), "not CUDA's fp4"
    assert torch.equal(bits(ours_absmax), bits(state.absmax)), "absmax differs"

    ours = dequantize(q)
    assert ours.dtype == w.dtype and ours.shape == w.shape
    deployed = dequantize_4bit_as_cuda(ours_packed, state.absmax, quant_type, block_size, w.shape, w.dtype)
    assert torch.equal(bits(ours), bits(deployed)), "decoded values differ from bitsandbytes' CUDA decoding"
    assert torch.equal(bits(fake_quantize(w, quant_type, block_size)), bits(ours))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 256), (33, 96), (1000,), (3, 5, 64), (7, 9)])
def test_random_weights(bnb, quant_type, dtype, shape):
    torch.manual_seed(sum(shape))
    w = (torch.randn(shape) * 0.02).to(dtype)
    assert_matches_bnb4(bnb, w, quant_type, 64)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block_size", BNB4_BLOCK_SIZES)
def test_every_block_size_with_a_tail(bnb, quant_type, block_size):
    torch.manual_seed(block_size)
    w = torch.randn(3 * 4096 + 130) * torch.rand(1) * 3  # numel not a multiple of any block size
    assert_matches_bnb4(bnb, w, quant_type, block_size)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adversarial_values(bnb, quant_type, dtype):
    """Exact midpoints between levels and their neighbours, zeros, zero blocks and tails, tiny values."""
    mids = levels_for(quant_type, "cpu").midpoints
    # Block 0 has absmax 1, so w / absmax is w itself: midpoints stay exact ties in fp32.
    up, down = torch.nextafter(mids, torch.ones(1)), torch.nextafter(mids, -torch.ones(1))
    ties = torch.cat([mids, -mids, up, down])
    block0 = torch.cat([torch.ones(1), ties, torch.zeros(64 - 1 - ties.numel())])
    tiny = torch.tensor([1e-30, -1e-30, 1e-38, 1.5e-45, 0.0, -0.0] * 8 + [3.0] * 16)
    w = torch.cat([block0, torch.zeros(64), tiny, torch.randn(64) * 1e-3, torch.zeros(40)]).to(dtype)
    assert_matches_bnb4(bnb, w.reshape(-1, 8), quant_type, 64)
    assert_matches_bnb4(bnb, w[:-1], quant_type, 64)  # odd count, padded nibble


def test_fp4_tiny_values_get_the_cuda_kernels_zero_patterns_not_the_cpus(bnb):
    w = torch.tensor([1.0, 1e-4, -1e-4, 0.0] * 16)
    packed, _ = bnb.quantize_4bit(w, blocksize=64, quant_type="fp4")
    cpu = unpacked(packed, 4).tolist()
    assert cpu == [3, 8, 0, 0], "bitsandbytes' CPU: (0, 0.0026] gets pattern 8, decoded -0.0 by its CUDA kernel"
    ours = unpacked(quantize(w, "fp4").to_bitsandbytes()[0], 4).tolist()
    assert ours == [3, 0, 8, 0], "CUDA (dQuantizeFP4): the sign bit is x < 0"


def test_non_contiguous_weight(bnb):
    w = torch.randn(128, 96).t()
    assert_matches_bnb4(bnb, w, "nf4", 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_matches_int8params(bnb, dtype):
    import bitsandbytes as bnb_pkg

    torch.manual_seed(0)
    w = (torch.randn(48, 80) * 0.05).to(dtype)
    w[3] = 0  # a zero row: bitsandbytes gets code 0 through 0 * inf = NaN -> int8
    w[5, 7] = 60000.0 if dtype != torch.bfloat16 else 1.0  # an outlier near fp16's largest value
    param = bnb_pkg.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")

    q = quantize(w, "int8")
    assert q.codes.dtype == torch.int8 and q.scales.shape == (48,)
    cb, scb = q.to_bitsandbytes()
    assert torch.equal(cb, param.data)
    assert torch.equal(bits(scb), bits(param.SCB))
    reference = bnb.int8_vectorwise_dequant(param.data, param.SCB).to(dtype)
    assert torch.equal(bits(dequantize(q)), bits(reference))
    assert torch.equal(bits(fake_quantize(w, "int8")), bits(reference))


def test_int8_matches_vectorwise_quant_ties(bnb):
    # Values that land on exact .5 multiples of the step exercise round-half-to-even.
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 63.5, -126.5]]).half()
    codes, stats, _ = bnb.int8_vectorwise_quant(w)
    q = quantize(w, "int8")
    assert torch.equal(q.codes, codes) and torch.equal(q.scales, stats)
