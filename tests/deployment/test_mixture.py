"""GGUF mixtures wherever a scheme is: each deployed layer computes with the type llama-quantize gives it."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_unlearn.deployment import (
    Deployment,
    deployed_layers,
    deployed_weights,
    layer_schemes,
    quantize_model_,
)
from lit_unlearn.quantization import fake_quantize


def _tiny_llama() -> LlamaForCausalLM:
    # 8 blocks of width 256 (K-quants fit; use_more_bits gives layers 0, 3, 6, 7 Q6_K), FFN 320 (down_proj's
    # rows are not whole super-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0).
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=256, intermediate_size=320, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16)
    return LlamaForCausalLM(config).eval()


EXPECTED = {
    "model.layers.0.self_attn.v_proj": "q6_k", "model.layers.1.self_attn.v_proj": "q4_k",
    "model.layers.7.self_attn.v_proj": "q6_k", "model.layers.2.self_attn.q_proj": "q4_k",
    "model.layers.3.mlp.down_proj": "q8_0", "model.layers.4.mlp.down_proj": "q5_0", "model.layers.4.mlp.up_proj": "q4_k",
}


def test_deployment_and_quantize_model_use_each_layers_mixture_type():
    model = _tiny_llama()
    originals = {name: model.get_submodule(name).weight.detach().clone() for name in EXPECTED}
    assert {name: layer_schemes(model, "q4_k_m")[name].name for name in EXPECTED} == EXPECTED
    with deployed_weights(model, Deployment("q4_k_m")):
        deployed = {name: model.get_submodule(name).weight.detach().clone() for name in EXPECTED}
    for name, gguf_type in EXPECTED.items():
        assert torch.equal(deployed[name], fake_quantize(originals[name], gguf_type)), name
        assert torch.equal(model.get_submodule(name).weight, originals[name]), "restored on exit"
    quantize_model_(model, "q4_k_m")
    for name, gguf_type in EXPECTED.items():
        assert torch.equal(model.get_submodule(name).weight, fake_quantize(originals[name], gguf_type)), name
    # The base type alone would be another weight for a layer that gets more bits.
    assert not torch.equal(deployed["model.layers.0.self_attn.v_proj"],
                           fake_quantize(originals["model.layers.0.self_attn.v_proj"], "q4_k"))


def test_a_layer_resolves_its_format_once():
    layer = next(layer for layer in deployed_layers(_tiny_llama()) if layer.name.endswith("0.self_attn.v_proj"))
    scheme = Deployment("q5_k_m").scheme
    assert layer.scheme_for(scheme) is layer.scheme_for(scheme)
    assert layer.scheme_for(scheme).name == "q6_k"
