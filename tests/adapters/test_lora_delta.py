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
