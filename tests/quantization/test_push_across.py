"""``push_across``: the inverse of projecting into the cells. Each pushed weight lands one level further in
its update's direction, nothing else deployed moves, and the pushes are the updates closest to their edge."""

from __future__ import annotations

import pytest
import torch

from lit_unlearn.quantization import dequantize, fake_quantize, quantize
from lit_unlearn.quantization.cells import push_across

SCHEMES = ["q4_1", "q4_0", "q5_0", "q5_1", "q8_0", "nf4", "fp4", "int4", "int4-asym", "int8"]


def on_grid(scheme: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A base on ``scheme``'s grid (as a GGUF file's weights are) and a small update, mostly under half a step."""
    g = torch.Generator().manual_seed(seed)
    w0 = fake_quantize(torch.randn(24, 256, generator=g) * 0.05, scheme)
    return w0, torch.randn(w0.shape, generator=g) * 0.002


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pushed_weights_land_one_level_further_and_nothing_else_moves(scheme: str) -> None:
    w0, d = on_grid(scheme)
    w = w0 + d
    pushed, n = push_across(w0, w, scheme, 0.01)
    moved = pushed != w
    assert n == int(moved.sum()) > 0.5 * 0.01 * w.numel()  # nearly every asked push is made
    q0, qw, qp = quantize(w0, scheme), quantize(w, scheme), quantize(pushed, scheme)
    assert torch.equal(qp.scales, qw.scales)  # no group's scale moved
    deployed, plain = dequantize(qp), dequantize(qw)
    assert torch.equal(deployed[~moved], plain[~moved])  # every other weight deploys as the plain update
    # Each pushed weight deploys one level away from its original level, in the update's direction, where the
    # plain update rounded back to the original.
    assert torch.equal(qw.codes[moved], q0.codes[moved])
    assert torch.equal(torch.sign(deployed - plain)[moved], torch.sign(d)[moved])
    assert torch.equal((qp.codes.long() - qw.codes.long()).abs()[moved], torch.ones(n, dtype=torch.long))


def test_the_pushes_are_the_largest_updates_against_the_step() -> None:
    w0, d = on_grid("q4_1")
    blocks = w0.view(-1, 32)
    # Extremes stay put (no scale moves), so on the grid every edge is half a step from its weight.
    setters = (blocks == blocks.max(1, keepdim=True).values) | (blocks == blocks.min(1, keepdim=True).values)
    d = torch.where(setters.view(w0.shape), 0.0, d)
    q = quantize(w0, "q4_1")
    progress = d.abs() / (q.scales.repeat_interleave(32, dim=-1) / 2)
    at_end = ((q.codes == 15) & (d > 0)) | ((q.codes == 0) & (d < 0))
    eligible = (progress < 1) & (d != 0) & ~at_end
    pushed, n = push_across(w0, w0 + d, "q4_1", 0.02)
    moved = pushed != w0 + d
    assert n == round(0.02 * w0.numel()) and bool((moved <= eligible).all())
    assert progress[moved].min() >= progress[eligible & ~moved].max()
    more, _ = push_across(w0, w0 + d, "q4_1", 0.04)
    assert bool((moved <= (more != w0 + d)).all())  # a larger share pushes a superset


def test_share_zero_and_an_update_that_crossed_are_left_alone() -> None:
    w0, d = on_grid("nf4")
    same, n = push_across(w0, w0 + d, "nf4", 0.0)
    assert n == 0 and torch.equal(same, w0 + d)
    big = w0 + 100 * d  # nearly every weight already crossed: few candidates remain, none is asked twice
    pushed, n = push_across(w0, big, "nf4", 1.0)
    crossed = quantize(big, "nf4").codes != quantize(w0, "nf4").codes
    assert torch.equal(pushed[crossed], big[crossed])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scheme": "q4_k"}, "no quantization cells"), ({"scheme": "bf16"}, "no integer grid"),
     ({"share": 1.5}, "fraction of the weights"), ({"w": torch.zeros(3, 3)}, "same layer")],
)
def test_refusals_name_the_value(kwargs: dict, message: str) -> None:
    w0, d = on_grid("q8_0")
    args = {"w0": w0, "w": w0 + d, "scheme": "q8_0", "share": 0.01} | kwargs
    with pytest.raises(ValueError, match=message):
        push_across(**args)
