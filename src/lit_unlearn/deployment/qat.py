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

from lit_unlearn.adapters import lora_product
from lit_unlearn.deployment.layers import DeployedLayer, merge
from lit_unlearn.quantization import Scheme, _fused, fake_quantize, fit_scheme
from lit_unlearn.quantization.functional import codec_for

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
    quantized = _quantized_merge(merged.detach(), None, fit_scheme(scheme, merged.shape))
    if not merged.requires_grad:
        return quantized
    return merged + (quantized - merged).detach()


def _quantized_merge(w0: torch.Tensor, delta: torch.Tensor | None, fitted: Scheme) -> torch.Tensor:
    """``fake_quantize(merge(w0, delta), fitted)`` (``w0`` alone without ``delta``; ``fitted`` fitted to the
    whole weight, whose rows these are): one compiled pass on a CPU where it applies, else eagerly."""
    fused = _fused.fake_quantize_merged(w0, delta, fitted, codec_for(fitted, w0.device).group_len(w0.shape))
    if fused is not None:
        return fused
    return fake_quantize(w0 if delta is None else merge(w0, delta), fitted)


def _lora_factors(layer: DeployedLayer) -> list[tuple[str, torch.Tensor, torch.Tensor]] | None:
    """``(adapter, A, B)`` of the active adapters of a quantized LoRA layer that :class:`_DeployedLoRA` serves
    (``ΔW = Σ s·B@A``), or ``None`` for any other layer."""
    lora = layer.lora
    if lora is None or not layer.quantized or lora.disable_adapters or getattr(lora, "fan_in_fan_out", False):
        return None
    active = [a for a in lora.active_adapters if a in lora.lora_A]
    if not active:
        return None
    return [(a, lora.lora_A[a].weight, lora.lora_B[a].weight) for a in active]


# Rows of the deployed weight formed at a time: whole nf4/fp4 blocks for any row length (a multiple of 64),
# about 2^20 weights (4 MiB in fp32). At least 64 rows per matrix product keeps every chunk on the BLAS
# path the whole product takes, so a chunk of B@A is the same bits as those rows of the whole product.
_CHUNK_WEIGHTS = 1 << 20
_ROW_MULTIPLE = 64


def _row_chunks(rows: int, cols: int) -> list[slice]:
    """Row ranges of ~:data:`_CHUNK_WEIGHTS` weights, multiples of 64 rows; the last one holds the remainder
    (so no range has fewer than 64 rows unless the weight has)."""
    step = max(_ROW_MULTIPLE, _CHUNK_WEIGHTS // max(cols, 1) // _ROW_MULTIPLE * _ROW_MULTIPLE)
    starts = list(range(0, rows, step))
    if len(starts) > 1 and rows - starts[-1] < _ROW_MULTIPLE:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], rows])]


class _DeployedLoRA(torch.autograd.Function):
    """``y = x @ Q(W0 + Σ s·B@A)ᵀ + b`` with straight-through gradients to ``x``, ``A``, ``B`` (and ``b``).

    Nothing weight-sized exists, in forward or backward: the deployed weight is formed a few rows at a time
    (:func:`_row_chunks`, ``ΔW``'s rows as peft's ``get_delta_weight`` computes them), each used for its
    columns of ``y`` and dropped; backward forms it again (the same arithmetic, so the same values) for
    ``∂L/∂x = g·Q(W)``; and ``∂L/∂W = gᵀx`` is never formed: ``∂L/∂B = s·gᵀ(x Aᵀ)`` and
    ``∂L/∂A = s·(g B)ᵀ x`` take ``tokens × r`` intermediates.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: DeployedLayer, scheme: Scheme,
                adapters: tuple[str, ...], *factors: torch.Tensor) -> torch.Tensor:
        ctx.layer, ctx.scheme, ctx.adapters = layer, scheme, adapters
        ctx.save_for_backward(x, *factors)
        y = None
        for rows, weight in _DeployedLoRA.weights(layer, scheme, adapters):
            part = F.linear(x, weight.to(x.dtype), None if bias is None else bias[rows].to(x.dtype))
            if rows.stop - rows.start == layer.linear.weight.shape[0]:
                return part
            if y is None:
                y = x.new_empty((*x.shape[:-1], layer.linear.weight.shape[0]))
            y[..., rows] = part  # chunk by chunk: no second output-sized tensor, as a concatenation would hold
        return y

    @staticmethod
    @torch.no_grad()
    def weights(layer: DeployedLayer, scheme: Scheme, adapters: tuple[str, ...]
                ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, Q(merged)[rows])`` chunk by chunk; one chunk (peft's whole ``ΔW``) off the CPU or where
        the factors are not fp32."""
        lora, w0 = layer.lora, layer.linear.weight.detach()
        fitted = fit_scheme(scheme, w0.shape)
        factors = [(lora.lora_A[a].weight, lora.lora_B[a].weight, lora.scaling[a]) for a in adapters]
        chunked = w0.device.type == "cpu" and all(
            a.dtype == torch.float32 and b.dtype == torch.float32 for a, b, _ in factors
        )
        if not chunked:
            delta = sum(lora.get_delta_weight(adapter) for adapter in adapters)
            yield slice(0, w0.shape[0]), _quantized_merge(w0, delta, fitted)
            return
        for rows in _row_chunks(*w0.shape):
            # get_delta_weight's arithmetic on these rows: (B @ A) * scaling, summed over the adapters, in
            # place: one matrix product and one pass per chunk.
            delta = lora_product((a, b[rows], scaling) for a, b, scaling in factors)
            yield rows, _quantized_merge(w0[rows], delta, fitted)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *factors = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_bias = None
        if needs[0]:
            for rows, weight in _DeployedLoRA.weights(ctx.layer, ctx.scheme, ctx.adapters):
                part = grad[..., rows].matmul(weight.to(grad.dtype))
                grad_x = part if grad_x is None else grad_x.add_(part)
        g = grad.reshape(-1, grad.shape[-1])
        if needs[1]:
            grad_bias = g.sum(0)
        rows = x.reshape(-1, x.shape[-1])
        grads: list[torch.Tensor | None] = []
        for adapter, a, b in zip(ctx.adapters, factors[0::2], factors[1::2]):
            scaling = ctx.layer.lora.scaling[adapter]
            grad_b = (g.t() @ (rows @ a.t().to(rows.dtype))).mul_(scaling).to(b.dtype) if b.requires_grad else None
            grad_a = ((g @ b.to(g.dtype)).t() @ rows).mul_(scaling).to(a.dtype) if a.requires_grad else None
            grads += [grad_a, grad_b]
        return (grad_x, grad_bias, None, None, None, *grads)


def _deployed_forward(layer: DeployedLayer, scheme: Scheme):
    linear = layer.linear

    def forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        factors = _lora_factors(layer)
        if factors is not None:
            adapters = tuple(adapter for adapter, _, _ in factors)
            flat = [t for _, a, b in factors for t in (a, b)]
            return _DeployedLoRA.apply(x, linear.bias, layer, scheme, adapters, *flat)
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
