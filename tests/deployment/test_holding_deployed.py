"""The functional check's held codes: a layer quantized once per scheme decodes to the weight it would
otherwise quantize on every forward, bit for bit, in every format family."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import build_tiny_llama

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.deployment.layers import deployed_layers, holding_deployed
from lit_unlearn.quantization import get_scheme


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["nf4", "fp4", "int4", "int8", "q4_0", "q4_1", "q5_1", "q8_0", "q4_k", "q6_k"])
def test_held_weight_equals_the_weight_quantized_each_time(name: str, dtype: torch.dtype) -> None:
    model = apply_lora(build_tiny_llama(256).to(dtype), LoRA(r=4, alpha=8.0, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    for param_name, param in model.named_parameters():
        if "lora_B" in param_name:
            param.data = (torch.randn(param.shape, generator=generator) * 0.05).to(param.dtype)
    scheme = get_scheme(name)
    layers = [layer for layer in deployed_layers(model) if layer.quantized]
    expected = [layer.weight(scheme) for layer in layers]
    with holding_deployed(layers):
        first = [layer.weight(scheme) for layer in layers]
        again = [layer.weight(scheme) for layer in layers]
        codes = [layer.quantized_weight(scheme) for layer in layers]
    for layer, want, got, repeat, held in zip(layers, expected, first, again, codes):
        assert got.dtype == want.dtype and torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                                                       want.view(torch.int16 if dtype != torch.float32 else torch.int32))
        assert torch.equal(repeat, got)
        assert torch.equal(held.dequantize(), want)
        assert layer._held is None
