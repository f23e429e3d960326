"""Quantization-aware forward passes: values are the deployed model's, gradients the straight-through ones."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import build_tiny_llama
from torch import nn

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.deployment import Deployment, deployed_layers, quantize_model_
from lit_unlearn.deployment.qat import quantization_aware
from lit_unlearn.quantization import fake_quantize, get_scheme

IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2], [1, 50, 60, 70, 80, 90, 100, 110]])


def _lora():
    model = apply_lora(build_tiny_llama(360), LoRA(r=4, alpha=8.0, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=g) * 0.05
    return model.eval()


@pytest.mark.parametrize("scheme", ["nf4", "int4", "int8"])
@pytest.mark.parametrize("lora", [True, False])
def test_quantized_forward_is_the_merged_and_quantized_model(scheme, lora):
    model = _lora() if lora else build_tiny_llama(360).eval()
    deployed = copy.deepcopy(model)
    deployed = deployed.merge_and_unload() if lora else deployed
    quantize_model_(deployed, scheme)
    with torch.no_grad():
        want = deployed(input_ids=IDS).logits
        plain = model(input_ids=IDS).logits
        with quantization_aware(deployed_layers(model), get_scheme(scheme)):
            got = model(input_ids=IDS).logits
        after = model(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, plain)
    assert torch.equal(after, plain), "outside the context the model is untouched"


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(64, 4, bias=False)


def test_ste_gradient_is_the_gradient_at_the_dequantized_weight():
    net = _Net()
    x = torch.randn(3, 64)
    scheme = get_scheme("int4")
    with quantization_aware(deployed_layers(net), scheme):
        loss = net.proj(x).pow(2).sum()
    loss.backward()
    w_q = fake_quantize(net.proj.weight.detach(), scheme).requires_grad_(True)
    (x @ w_q.t()).pow(2).sum().backward()
    assert torch.equal(net.proj.weight.grad, w_q.grad)
    # By hand: d/dW sum((x Wᵀ)²) = 2 (x Wqᵀ)ᵀ x.
    torch.testing.assert_close(net.proj.weight.grad, 2 * (x @ w_q.detach().t()).t() @ x)


def test_ste_gradient_reaches_the_lora_factors_through_the_merge():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_Net(), LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], lora_dropout=0.0))
    layer = model.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    x = torch.randn(3, 64)
    scheme = get_scheme("nf4")
    with quantization_aware(deployed_layers(model), scheme):
        model.base_model.model.proj(x).pow(2).sum().backward()
    w_q = fake_quantize((layer.base_layer.weight + s * b @ a).detach(), scheme)
    g = 2 * (x @ w_q.t()).t() @ x  # dL/dWq
    torch.testing.assert_close(b.grad, s * g @ a.detach().t())
    torch.testing.assert_close(a.grad, s * b.detach().t() @ g)
    assert layer.base_layer.weight.grad is None, "the frozen base gets no gradient"


def test_module_option_is_checked_before_loading():
    from lit_unlearn import UnlearningModule

    with pytest.raises(ValueError, match=r"'nf5'.*'nf4'.*'int4:64'"):
        UnlearningModule("does/not/matter", quantization_aware="nf5")
    with pytest.raises(ValueError, match="block size after ':'"):
        UnlearningModule("does/not/matter", quantization_aware="int4:x")
    with pytest.raises(ValueError, match="block_size"):
        UnlearningModule("does/not/matter", quantization_aware="nf4:48")
    assert UnlearningModule("x", quantization_aware="int4:64").qat_scheme == get_scheme("int4", 64)
    assert UnlearningModule("x").qat_scheme is None


@pytest.mark.parametrize("spec", [Deployment("nf4", modules=["q_proj"]), {"precision": "nf4", "modules": ["q_proj"]}])
def test_quantization_aware_takes_a_whole_deployment_and_trains_through_its_layers(tiny_model_dir, spec):
    # The deployment's layer selection travels with it: only q_proj is fake-quantized, every other layer
    # computes at full precision inside the quantization-aware context.
    from lit_unlearn import UnlearningModule

    module = UnlearningModule(tiny_model_dir, lora=LoRA(r=4, alpha=8.0, dropout=0.0), quantization_aware=spec)
    assert module.qat_deployment == Deployment("nf4", modules=["q_proj"])
    module.configure_model()
    quantized = sorted({layer.name.rsplit(".", 1)[-1] for layer in module._qat.layers if layer.quantized})
    assert quantized == ["q_proj"]
    with pytest.raises(ValueError, match=r"`quantization_aware`=Deployment\(precision='int8'.*'rtn8'"):
        UnlearningModule("x", quantization_aware=Deployment("int8"))
