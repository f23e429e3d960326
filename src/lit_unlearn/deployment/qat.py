"""Quantization-aware forward passes: the model computes with its deployed weights, gradients flow through.

Inside :func:`quantization_aware`, every deployed linear layer computes ``x @ Q(W0 + ΔW)ᵀ + b`` — the
merged weight (:func:`~lit_unlearn.deployment.merge`, peft's arithmetic) fake-quantized with the
deployment's scheme — and the straight-through estimator carries the gradient past the rounding:
``∂L/∂W := ∂L/∂Q(W)``, so the trainable weights (full-parameter) or the LoRA factors (``ΔW = s·B·A``, by
the chain rule through the merge) receive the gradient of the *deployed* model's loss. Outside the context
nothing is changed; layers keep their parameters, so optimizers, checkpoints and saving see the model as it
is. A LoRA layer's dropout does not apply inside (the merged weight has no separate adapter path).

This is the straight-through training of quantization-aware fine-tuning, applied to unlearning so that
forgetting is optimized where the quantized model keeps it (cf. DurableUn-SAF, arXiv 2605.02196).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lit_unlearn.deployment.layers import DeployedLayer, merge
from lit_unlearn.quantization import Scheme, fake_quantize

__all__ = ["quantization_aware", "ste_weight"]


def _merged_with_grad(layer: DeployedLayer) -> torch.Tensor:
    """The current merged weight, differentiable in the trainable parameters (``W``, or ``A`` and ``B``)."""
    weight = layer.linear.weight
    lora = layer.lora
    if lora is None:
        return weight
    active = [a for a in lora.active_adapters if a in lora.lora_A]
    if not active or lora.disable_adapters:
        return weight
    delta = sum(lora.get_delta_weight(adapter) for adapter in active)
    return merge(weight, delta)


def ste_weight(layer: DeployedLayer, scheme: Scheme) -> torch.Tensor:
    """``Q(merged)`` in value, ``merged`` in gradient: ``merged + (Q(merged) − merged).detach()``."""
    merged = _merged_with_grad(layer)
    if not layer.quantized:
        return merged
    quantized = fake_quantize(merged.detach(), scheme)
    if not merged.requires_grad:
        return quantized
    return merged + (quantized - merged).detach()


def _deployed_forward(layer: DeployedLayer, scheme: Scheme):
    linear = layer.linear

    def forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        weight = ste_weight(layer, scheme)
        return F.linear(x, weight.to(x.dtype), None if linear.bias is None else linear.bias.to(x.dtype))

    return forward


@contextlib.contextmanager
def quantization_aware(layers: Sequence[DeployedLayer], scheme: Scheme) -> Iterator[None]:
    """Within the context, each of ``layers`` computes with its straight-through deployed weight.

    Each layer's forward module (the LoRA wrapper, or the linear layer) gets an instance-level ``forward``
    for the duration; the originals are restored on exit, also when the body raises.
    """
    patched: list[tuple[nn.Module, object]] = []
    try:
        for layer in layers:
            module = layer.forward_module
            patched.append((module, module.__dict__.get("forward")))
            module.forward = types.MethodType(_deployed_forward(layer, scheme), module)
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
