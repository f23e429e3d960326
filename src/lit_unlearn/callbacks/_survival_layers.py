"""Which linear layers ``QuantizationSurvival`` watches, and where each one's ``W0`` and ``ΔW`` come from.

Three kinds of watched layer:

* ``lora``: a peft LoRA layer on a frozen base. ``W0`` is the base weight itself (never copied) and
  ``ΔW = scaling · B @ A`` comes from :func:`lit_unlearn.adapters.lora_delta`, one layer at a time, into
  one buffer that a check reuses for every layer (allocating a fresh weight-sized tensor per layer costs
  more in page faults than the product itself).
* ``snapshot``: a trainable weight (full-parameter unlearning, or a user's own module). ``W0`` is a copy
  taken at fit start and kept in host RAM in the weight's own dtype; ``ΔW = W − W0``.
* ``frozen``: a frozen weight without an adapter. It has no update, so the weight-space statistics skip
  it, but the functional check still quantizes it, as a deployment would.

``Q(W0)`` never changes during a fit, so its codes and scales are computed once per scheme and cached in
host RAM; every check then quantizes only the current weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lit_unlearn.adapters import lora_delta
from lit_unlearn.quantization import (
    QuantizedTensor,
    Scheme,
    SurvivalStats,
    default_filter,
    fake_quantize,
    quantize,
    survival_stats,
    survival_stats_delta,
)
from lit_unlearn.swap import swapped_weights

LayerKind = Literal["lora", "snapshot", "frozen"]


@dataclass
class WatchedLayer:
    """One watched ``nn.Linear``: its module, its LoRA wrapper if any, and its reference ``W0``."""

    name: str
    linear: nn.Linear
    kind: LayerKind
    lora: nn.Module | None = None
    snapshot: torch.Tensor | None = None
    # Q(W0) per scheme name, in host RAM.
    reference_codes: dict[str, QuantizedTensor] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.linear.weight.numel()

    def w0(self) -> torch.Tensor:
        """``W0`` on the weight's device (a transfer from host RAM for ``snapshot`` layers)."""
        weight = self.linear.weight
        if self.snapshot is None:
            return weight.detach()
        return self.snapshot.to(weight.device, non_blocking=True)

    def w1(self) -> torch.Tensor:
        """The current effective weight; for LoRA the merged ``W0 + ΔW`` in ``W0``'s dtype, as peft merges."""
        weight = self.linear.weight.detach()
        return weight + self.lora_delta() if self.kind == "lora" else weight

    def lora_delta(self, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """``scaling · B @ A`` summed over the active adapters (zero when none is active), in ``buffer``."""
        delta = lora_delta(self.lora, out=buffer)
        return torch.zeros_like(self.linear.weight) if delta is None else delta

    def survival(self, schemes: Sequence[Scheme], buffer: torch.Tensor | None = None) -> dict[str, SurvivalStats]:
        """Weight-space statistics of this layer's update under each scheme, against the cached ``Q(W0)``.

        Extra memory is one layer: ``ΔW`` (LoRA, in ``buffer`` when given: see :func:`delta_buffer`) or the
        device copy of ``W0`` (snapshot), plus the codes of one scheme at a time; the statistics
        themselves stream over the weight in chunks.
        """
        # The statistics move each cached reference to the weight's device themselves.
        codes = self.reference_codes
        if self.kind == "lora":
            w0, delta = self.linear.weight.detach(), self.lora_delta(buffer)
            return {s.name: survival_stats_delta(w0, delta, s, reference=codes[s.name]) for s in schemes}
        w0, w1 = self.w0(), self.linear.weight.detach()
        return {s.name: survival_stats(w0, w1, s, reference=codes[s.name]) for s in schemes}


def delta_buffer(layers: Sequence[WatchedLayer]) -> torch.Tensor | None:
    """One flat fp32 buffer that holds the largest LoRA layer's ``ΔW``, for one check of all layers."""
    lora = [layer for layer in layers if layer.kind == "lora"]
    if not lora:
        return None
    largest = max(lora, key=lambda layer: layer.numel)
    return torch.empty(largest.numel, dtype=torch.float32, device=largest.linear.weight.device)


def model_of(pl_module: nn.Module) -> nn.Module:
    """The network that layer names and the probe loss refer to: ``pl_module.model``, else ``pl_module``."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else pl_module


def _clean(name: str) -> str:
    # The names a user sees are those of the merged model: drop peft's wrapper prefix and the
    # ``.base_layer`` hop, so that a regex written for the plain model selects the same layers.
    name = name.removesuffix(".base_layer")
    return name.removeprefix("base_model.model.")


def _lora_layers(model: nn.Module) -> dict[int, nn.Module]:
    """``id(base linear) → LoraLayer`` for every peft LoRA layer of ``model``."""
    from peft.tuners.lora import LoraLayer

    return {id(m.get_base_layer()): m for m in model.modules() if isinstance(m, LoraLayer)}


def _adapter_internals(model: nn.Module, owners: dict[int, nn.Module]) -> set[int]:
    # The A and B matrices of an adapter are nn.Linear too; they are part of ΔW, not layers to watch.
    internal: set[int] = set()
    for owner in owners.values():
        base = set(map(id, owner.get_base_layer().modules()))
        internal.update(id(m) for m in owner.modules() if m is not owner and id(m) not in base)
    return internal


def _matcher(modules: str | Sequence[str] | None, model: nn.Module):
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if modules is None:
        return lambda name, module: module is not head and default_filter(name, module)
    if isinstance(modules, str):
        pattern = re.compile(modules)
        return lambda name, module: pattern.search(name) is not None
    wanted = tuple(modules)
    return lambda name, module: any(name == w or name.endswith("." + w) for w in wanted)


def select_linear_layers(model: nn.Module, modules: str | Sequence[str] | None) -> list[WatchedLayer]:
    """The ``nn.Linear`` layers of ``model`` that ``modules`` selects, each classified by kind.

    ``modules`` is ``None`` (every linear layer but the output head), a regex searched in each layer
    name, or a sequence of names, each matching a full name or its trailing components (``"q_proj"``).

    Raises:
        ValueError: if nothing is selected (the message lists the linear layers there are), or if a LoRA
            layer's base weight is trainable (the base must be frozen for ``W0`` to be the base).
    """
    owners = _lora_layers(model)
    internal = _adapter_internals(model, owners)
    # Already-quantized layers (bitsandbytes' Linear4bit holds uint8 weights) have nothing left to measure.
    linears = {
        _clean(n): m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.weight.is_floating_point() and id(m) not in internal
    }
    matches = _matcher(modules, model)
    layers = []
    for name, linear in linears.items():
        if not matches(name, linear):
            continue
        owner = owners.get(id(linear))
        if owner is not None:
            if linear.weight.requires_grad:
                raise ValueError(
                    f"Layer {name!r} has a LoRA adapter but its base weight is trainable. "
                    "QuantizationSurvival measures ΔW = scaling·B·A against a frozen base; "
                    "freeze the base weights."
                )
            layers.append(WatchedLayer(name, linear, "lora", lora=owner))
        else:
            kind: LayerKind = "snapshot" if linear.weight.requires_grad else "frozen"
            layers.append(WatchedLayer(name, linear, kind))
    if not any(layer.kind != "frozen" for layer in layers):
        shown = ", ".join(list(linears)[:8]) + (", …" if len(linears) > 8 else "")
        what = "no linear layer" if not layers else "only frozen linear layers without an adapter"
        raise ValueError(
            f"`modules`={modules!r} selects {what} of {type(model).__name__}, so there is no update to "
            f"measure. Its linear layers are: {shown}. Pass names or a regex matching some of them, or "
            "`modules=None`."
        )
    return layers


@torch.no_grad()
def prepare_references(
    layers: list[WatchedLayer], schemes: Sequence[Scheme], snapshot: dict[str, torch.Tensor]
) -> None:
    """Fill in each layer's host copy of ``W0`` (snapshot layers) and its cached ``Q(W0)`` per scheme.

    ``snapshot`` maps names to saved ``W0`` (from a checkpoint); layers missing from it copy their current
    weight. Work and memory are one layer at a time on the device; the results live in host RAM.
    """
    for layer in layers:
        if layer.kind == "frozen":
            continue
        weight = layer.linear.weight.detach()
        if layer.kind == "snapshot":
            saved = snapshot.get(layer.name)
            if saved is None or saved.shape != weight.shape:
                saved = weight
            # Pinned host memory makes the per-check transfer back to an accelerator asynchronous.
            host = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=weight.device.type == "cuda")
            layer.snapshot = host.copy_(saved)
        w0 = layer.w0()
        layer.reference_codes = {s.name: quantize(w0, s).to("cpu") for s in schemes}


def quantized_weight(layer: WatchedLayer, scheme: Scheme, original: bool) -> torch.Tensor:
    """The deployed weight: ``Q(W0)`` (original) or ``Q(W0 + ΔW)`` (current, the merged LoRA weight).

    ``Q(W0)`` decodes the cached codes, which equals ``fake_quantize(W0)`` exactly.
    """
    cached = layer.reference_codes.get(scheme.name)
    if original and cached is not None:
        return cached.to(layer.linear.weight.device).dequantize()
    return fake_quantize(layer.w0() if original else layer.w1(), scheme)


@contextlib.contextmanager
def computing_as(layer: WatchedLayer, scheme: Scheme | None, original: bool) -> Iterator[None]:
    """``layer`` computing as the original (``W0``) or current model would, quantized with ``scheme``.

    ``scheme=None`` is the full-precision original ``W0``. For the current weights of a LoRA layer this is
    the deployment protocol: the merged ``W0 + ΔW`` quantized, with the adapter off. ``ΔW`` is read before
    the adapter is switched off, so enter this around the LoRA layer's own call (see :func:`forward_module`).
    """
    weight = layer.w0() if scheme is None else quantized_weight(layer, scheme, original)
    owners = [layer.lora] if layer.lora is not None and not original else []
    with adapters_disabled(owners), swapped_weights(layer.linear, {"weight": weight}):
        yield


def forward_module(layer: WatchedLayer, original: bool) -> nn.Module:
    """The module whose call :func:`computing_as` must wrap: the LoRA layer for current LoRA weights."""
    return layer.lora if layer.lora is not None and not original else layer.linear


def lora_owners(model: nn.Module) -> list[nn.Module]:
    """Every peft LoRA layer of ``model``, watched or not."""
    return list(_lora_layers(model).values())


@contextlib.contextmanager
def adapters_disabled(owners: Sequence[nn.Module]) -> Iterator[None]:
    """Run the given LoRA layers as their bare base layers, then restore them exactly.

    Per layer rather than :func:`lit_unlearn.adapters.reference_mode`: that needs the ``PeftModel``
    wrapper, and the functional check must switch off only the watched layers in its quantized runs.
    peft's ``enable_adapters`` also sets ``requires_grad``; the flags are put back as they were.
    """
    states = [(owner, owner.disable_adapters, [(p, p.requires_grad) for p in owner.parameters()])
              for owner in owners]
    try:
        for owner in owners:
            owner.enable_adapters(False)
        yield
    finally:
        for owner, was_disabled, flags in states:
            owner.enable_adapters(not was_disabled)
            for param, requires_grad in flags:
                param.requires_grad_(requires_grad)
