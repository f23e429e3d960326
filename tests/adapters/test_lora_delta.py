"""``lora_delta`` computes peft's merge increment bit for bit, into a reused buffer when it can."""

import pytest
import torch
from peft.tuners.lora import LoraLayer
from tests.evaluation.muse_fixtures import build_llama

from lit_unlearn.adapters import LoRA, apply_lora, lora_delta, lora_deltas


def lora_model(dtype=torch.float32):
    model = apply_lora(build_llama(64), LoRA(r=4, alpha=8.0))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    return model.to(dtype) if dtype != torch.float32 else model


def layers(model):
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_buffered_delta_is_get_delta_weight_bit_for_bit():
    model = lora_model()
    buffer = torch.full((max(m.get_base_layer().weight.numel() for m in layers(model)),), float("nan"))
    for layer in layers(model):
        expected = layer.get_delta_weight("default")
        got = lora_delta(layer, out=buffer)
        assert got.data_ptr() == buffer.data_ptr()  # computed in place
        assert torch.equal(got, expected)
        assert torch.equal(lora_delta(layer), expected)
    assert [d.shape for _, _, d in lora_deltas(model)] == [m.get_base_layer().weight.shape for m in layers(model)]


@pytest.mark.parametrize("case", ["bf16 adapter", "small buffer", "disabled"])
def test_falls_back_to_peft_or_none(case):
    model = lora_model(torch.bfloat16 if case == "bf16 adapter" else torch.float32)
    layer = layers(model)[0]
    buffer = torch.empty(3 if case == "small buffer" else layer.get_base_layer().weight.numel())
    if case == "disabled":
        with model.disable_adapter():
            assert lora_delta(layer, out=buffer) is None
        return
    got = lora_delta(layer, out=buffer)
    assert got.data_ptr() != buffer.data_ptr()
    assert torch.equal(got, layer.get_delta_weight("default"))


def test_lora_product_sums_adapters_as_peft_does_and_refuses_none():
    # A layer's adapter and a second pair of factors: one adapter's update is peft's get_delta_weight bit for
    # bit, two are the sum of theirs, and the update of any rows of B (a quantization-aware chunk, a rank's
    # shard) is the same arithmetic on those rows.
    from lit_unlearn.adapters import lora_product

    layer = layers(lora_model())[0]
    a, b, s = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach(), layer.scaling["default"]
    generator = torch.Generator().manual_seed(1)
    a2, b2 = torch.randn(2, a.shape[1], generator=generator), torch.randn(b.shape[0], 2, generator=generator) * 0.05
    assert torch.equal(lora_product([(a, b, s)]), layer.get_delta_weight("default"))
    expected = (b @ a) * s + (b2 @ a2) * 0.5
    factors = [(a, b, s), (a2, b2, 0.5)]
    assert torch.equal(lora_product(factors), expected)
    buffer = torch.full((expected.numel() + 5,), float("nan"))
    assert lora_product(factors, out=buffer).data_ptr() == buffer.data_ptr()
    assert torch.equal(buffer[: expected.numel()].view_as(expected), expected)
    rows = slice(3, 11)
    chunk = lora_product((fa, fb[rows], fs) for fa, fb, fs in factors)
    torch.testing.assert_close(chunk, expected[rows], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="`factors` is empty"):
        lora_product([])
