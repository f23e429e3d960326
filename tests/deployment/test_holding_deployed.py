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


@pytest.mark.parametrize(("name", "dtype", "adapter"), [
    ("nf4", torch.float32, "lora"), ("nf4", torch.bfloat16, "lora"), ("nf4", torch.float32, "full"),
    ("int4", torch.float32, "lora"), ("q4_1", torch.float32, "lora"), ("q4_0", torch.bfloat16, "full"),
])
def test_a_large_layer_is_deployed_by_the_compiled_pass_bit_for_bit(name, dtype, adapter) -> None:
    from lit_unlearn.quantization import _fused, fake_quantize
    from lit_unlearn.quantization.merge import merge

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=512, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype)  # 512 x 512 projections: 2^18 weights, over the compiled floor
    if adapter == "lora":
        model = apply_lora(model, LoRA(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj"]))
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.data = (torch.randn(param.shape) * 0.05).to(param.dtype)
    (layer,) = [layer for layer in deployed_layers(model) if layer.quantized and layer.name.endswith("q_proj")]
    assert layer.numel >= _fused.MIN_ELEMENTS
    scheme = get_scheme(name)
    compiled = layer._compiled_weight(scheme)
    assert compiled is not None  # the compiled pass applies ...
    w0 = layer.linear.weight.detach()
    merged = w0 if adapter == "full" else merge(w0, layer.delta())
    want = fake_quantize(merged, layer.scheme_for(scheme))
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    got = layer.weight(scheme)
    assert got.dtype == dtype and torch.equal(got.view(bits), want.view(bits))  # ... and is the eager weight
    assert layer._compiled_weight(get_scheme("int8")) is None  # LLM.int8 computes from its codes
