"""Quantization-aware forward passes: the model computes with its deployed weights, gradients flow through.

Inside :func:`quantization_aware`, every deployed linear layer computes ``x @ Q(W0 + ΔW)ᵀ + b`` — the
merged weight (:func:`~lit_unlearn.deployment.merge`, peft's arithmetic) fake-quantized with the
deployment's scheme — and the straight-through estimator carries the gradient past the rounding:
``∂L/∂W := ∂L/∂Q(W)``, so the trainable weights (full-parameter) or the LoRA factors (``ΔW = s·B·A``, by
the chain rule through the merge) receive the gradient of the *deployed* model's loss. Outside the context
nothing is changed; layers keep their parameters, so optimizers, checkpoints and saving see the model as it
is. A LoRA layer's dropout does not apply inside (the merged weight has no separate adapter path).

Activation checkpointing re-runs a block's forward during backward, after the context has been left;
:class:`QuantizationAwareSwitch` hands ``torch.utils.checkpoint`` a ``context_fn`` that replays each block
in the mode its forward ran in, so the gradients are the same with checkpointing on or off.

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

__all__ = ["QuantizationAwareSwitch", "quantization_aware", "ste_weight"]


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


class QuantizationAwareSwitch:
    """Quantization-aware forwards switched on and off per forward pass, and replayed alike on recompute.

    ``switch(on)`` is a context in which ``layers`` compute straight-through (``on=True``) or as they are.
    :meth:`checkpoint_contexts` is ``torch.utils.checkpoint``'s ``context_fn`` (non-reentrant only): called
    when a checkpointed block runs forward, it reads the mode then, and returns a recompute context that
    enters the same mode while backward re-runs that block, after the forward's own context has closed.
    Without it the recomputed block would run the unpatched forward: other activations than the ones the
    forward's graph was built on (silently wrong full-parameter gradients; a ``CheckpointError`` for LoRA).

    Args:
        scheme: The deployment's scheme.
        layers: The deployed layers (set later with :attr:`layers` when the model is built after the switch).

    Example::

        switch = QuantizationAwareSwitch(get_scheme("nf4"))
        model.gradient_checkpointing_enable({"use_reentrant": False, "context_fn": switch.checkpoint_contexts})
        switch.layers = deployed_layers(model)
        with switch(True):
            loss = model(**batch).loss
        loss.backward()  # checkpointed blocks recompute straight-through, as their forward ran
    """

    def __init__(self, scheme: Scheme, layers: Sequence[DeployedLayer] = ()) -> None:
        self.scheme = scheme
        self.layers: Sequence[DeployedLayer] = layers
        self.on = False

    @contextlib.contextmanager
    def __call__(self, on: bool = True) -> Iterator[None]:
        if not on:
            yield
            return
        previous, self.on = self.on, True
        try:
            with quantization_aware(self.layers, self.scheme):
                yield
        finally:
            self.on = previous

    def checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """``(forward context, recompute context)`` for ``torch.utils.checkpoint.checkpoint(context_fn=...)``."""
        return contextlib.nullcontext(), self(self.on)
