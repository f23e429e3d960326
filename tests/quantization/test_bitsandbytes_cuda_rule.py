"""nf4 / fp4 codes are those bitsandbytes' CUDA kernel stores, checked against the kernel's own if-ladders.

``dQuantizeFP4`` and ``dQuantizeNF4`` (``csrc/kernels.cu``, bitsandbytes 0.50) are transcribed below element
by element in numpy float32, literals and all, from the CUDA source, not from lit-unlearn's tables. The
kernel multiplies every weight by ``1.0f / absmax`` (the tail block too) and, compiled with
``--use_fast_math``, flushes a subnormal product to a zero of the same sign before comparing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_unlearn.quantization import quantize

F = np.float32
FLT_MIN = F(2.0**-126)

# dQuantizeFP4's pivots, as written in kernels.cu.
FP4_PIVOTS = (F(0.00260417), F(0.0859375), F(0.20833333), F(0.29166667), F(0.4166667), F(0.583333), F(0.8333333))
# dQuantizeNF4's pivots, as written in kernels.cu.
NF4_PIVOTS = (
    F(-0.8480964004993439), F(-0.6106329262256622), F(-0.4599952697753906), F(-0.33967943489551544),
    F(-0.23460740596055984), F(-0.13791173323988914), F(-0.045525018125772476), F(0.03979014977812767),
    F(0.1202552504837513), F(0.2035212516784668), F(0.2920137718319893), F(0.3893125355243683),
    F(0.5016634166240692), F(0.6427869200706482), F(0.8614784181118011),
)


def flush(x: np.float32) -> np.float32:
    """-ftz=true: a subnormal result is replaced by a zero of the same sign."""
    return F(np.copysign(F(0.0), x)) if abs(x) < FLT_MIN else x


def d_quantize_fp4(x: np.float32) -> int:
    x = flush(x)
    sign = 0b1000 if x < 0 else 0b0000
    x = F(abs(x))
    if x > F(0.29166667):
        if x > F(0.583333):
            return (0b0011 if x > F(0.8333333) else 0b0010) + sign
        return (0b101 if x > F(0.4166667) else 0b100) + sign
    if x > F(0.0859375):
        return (0b0111 if x > F(0.20833333) else 0b0110) + sign
    if x > F(0.00260417):
        return 0b0001 + sign
    return 0b0000 + sign


def d_quantize_nf4(x: np.float32) -> int:
    x = flush(x)
    if x > F(0.03979014977812767):
        if x > F(0.3893125355243683):
            if x > F(0.6427869200706482):
                return 0b1111 if x > F(0.8614784181118011) else 0b1110
            return 0b1101 if x > F(0.5016634166240692) else 0b1100
        if x > F(0.2035212516784668):
            return 0b1011 if x > F(0.2920137718319893) else 0b1010
        return 0b1001 if x > F(0.1202552504837513) else 0b1000
    if x > F(-0.33967943489551544):
        if x > F(-0.13791173323988914):
            return 0b0111 if x > F(-0.045525018125772476) else 0b0110
        return 0b0101 if x > F(-0.23460740596055984) else 0b0100
    if x > F(-0.6106329262256622):
        return 0b0011 if x > F(-0.4599952697753906) else 0b0010
    return 0b0001 if x > F(-0.8480964004993439) else 0b0000


KERNEL = {"fp4": d_quantize_fp4, "nf4": d_quantize_nf4}


def kernel_codes(w: torch.Tensor, quant_type: str, block_size: int = 64) -> np.ndarray:
    """Per element, the 4-bit code kQuantizeBlockwise stores: ``dQuantize(w * (1.0f / absmax))``."""
    flat = w.detach().float().reshape(-1).numpy()
    codes = np.empty(flat.size, dtype=np.int64)
    quantize_one = KERNEL[quant_type]
    for start in range(0, flat.size, block_size):
        block = flat[start : start + block_size]
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero block: 1 / 0, then 0 * inf = NaN
            reciprocal = F(F(1.0) / F(np.abs(block).max()))
        with np.errstate(invalid="ignore"):
            for i, value in enumerate(block):
                codes[start + i] = quantize_one(F(F(value) * reciprocal))
    return codes


def our_codes(w: torch.Tensor, quant_type: str, block_size: int = 64) -> np.ndarray:
    """lit-unlearn's codes in bitsandbytes' numbering (its packed nibbles, high first)."""
    packed, _ = quantize(w, quant_type, block_size).to_bitsandbytes()
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[: w.numel()].long().numpy()


def at_every_pivot(pivots: tuple[np.float32, ...], signed: bool) -> torch.Tensor:
    """Weights on each pivot and one ulp either side (``±`` each for fp4's magnitude pivots), then ±0,
    ± the smallest normal and ± a subnormal, in blocks of 64 whose absmax is 1.0 (so ``x`` is ``w``)."""
    p = np.array(pivots, dtype=np.float32)
    values = np.concatenate([p, np.nextafter(p, F(np.inf)), np.nextafter(p, F(-np.inf))])
    if signed:
        values = np.concatenate([values, -values])
    specials = np.array([0.0, -0.0, FLT_MIN, -FLT_MIN, 1e-40, -1e-40, 1e-30, -1e-30], dtype=np.float32)
    values = np.concatenate([values, specials])
    per_block = 63
    blocks = []
    for start in range(0, values.size, per_block):
        part = values[start : start + per_block]
        block = np.zeros(64, dtype=np.float32)
        block[0] = 1.0
        block[1 : 1 + part.size] = part
        blocks.append(block)
    return torch.from_numpy(np.concatenate(blocks))


@pytest.mark.parametrize(("quant_type", "pivots", "signed"), [("fp4", FP4_PIVOTS, True), ("nf4", NF4_PIVOTS, False)])
def test_codes_on_every_kernel_pivot_and_one_ulp_either_side(quant_type, pivots, signed):
    w = at_every_pivot(pivots, signed)
    expected, ours = kernel_codes(w, quant_type), our_codes(w, quant_type)
    wrong = np.flatnonzero(expected != ours)
    assert wrong.size == 0, [(float(w[i]), int(expected[i]), int(ours[i])) for i in wrong[:8]]


def test_fp4_zero_codes_follow_the_sign_on_a_gpu():
    """The CUDA kernel gives pattern 8 (decoded -0.0) to small *negative* weights and pattern 0 to small
    positive ones and to ±0; bitsandbytes' CPU bucketize does the reverse for (0, 0.0026]."""
    w = torch.tensor([1.0, 1e-4, -1e-4, 0.0, -0.0, 1e-40, -1e-40] + [0.5] * 57)
    codes = our_codes(w, "fp4")
    assert codes[:7].tolist() == [3, 0, 8, 0, 0, 0, 0]


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ordinary_weights_and_a_tail_block(quant_type, dtype):
    """Random weights (σ 0.02, some rows scaled), 33 × 97 = 3201 elements: 50 blocks and a tail of 1."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(33, 97, generator=generator) * 0.02
    w[::5] *= 40.0
    w = w.to(dtype)
    expected, ours = kernel_codes(w, quant_type), our_codes(w, quant_type)
    assert np.array_equal(expected, ours), f"{int((expected != ours).sum())} of {expected.size} codes differ"


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
def test_weights_parked_on_cell_edges(quant_type):
    """Weights at the largest value that still keeps each code (what PreserveQuantization parks them on),
    found with the transcribed kernel itself: the codec must give every one the kernel's code."""
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(16, 64, generator=generator) * 0.02
    codes = kernel_codes(w, quant_type)
    flat = w.reshape(-1).numpy().copy()
    for b in range(16):
        block = flat[b * 64 : (b + 1) * 64]
        top = int(np.abs(block).argmax())
        reciprocal = F(F(1.0) / F(np.abs(block[top])))
        for i in range(64):
            if i == top:
                continue
            code = codes[b * 64 + i]
            hi = F(abs(block[top]) * 0.999)
            # Bisect on float32 values for the largest w with the same code, below the block's absmax.
            lo_v = block[i]
            while True:
                mid = F((lo_v + hi) / 2)
                if mid in (lo_v, hi):
                    break
                if KERNEL[quant_type](F(mid * reciprocal)) == code:
                    lo_v = mid
                else:
                    hi = mid
            block[i] = lo_v
    parked = torch.from_numpy(flat).reshape(16, 64)
    expected, ours = kernel_codes(parked, quant_type), our_codes(parked, quant_type)
    assert np.array_equal(expected, codes), "parking kept the kernel's codes"
    assert np.array_equal(expected, ours), f"{int((expected != ours).sum())} of {expected.size} codes differ"
