"""Which deployed layers the survival engine watches, and the buffers and references a check reuses.

The layers themselves, their ``W0``/``ΔW`` sources, the merge and the deployed weight are
:class:`lit_unlearn.deployment.DeployedLayer`'s. Three sources:

* ``lora``: a peft LoRA layer on a frozen base. ``W0`` is the base weight itself (never copied) and
  ``ΔW = scaling · B @ A``, computed one layer at a time into one buffer that a check reuses for every
  layer (allocating a fresh weight-sized tensor per layer costs more in page faults than the product).
* ``snapshot``: a trainable weight (full-parameter unlearning, or a user's own module). ``W0`` is a copy
  taken at fit start and kept in host RAM in the weight's own dtype; ``ΔW = W − W0``.
* ``frozen``: a frozen weight without an adapter. It has no update, so the weight-space statistics skip
  it, but the functional check still quantizes it, as a deployment would.

``Q(W0)`` never changes during a fit, so its codes and scales are computed once per scheme and cached in
host RAM; every check then quantizes only the current weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_unlearn.deployment import DeployedLayer, Modules, deployed_layers
from lit_unlearn.quantization import Scheme

__all__ = ["delta_buffer", "model_of", "prepare_references", "select_linear_layers"]


def model_of(pl_module: nn.Module) -> nn.Module:
    """The network that layer names and the probe loss refer to: ``pl_module.model``, else ``pl_module``."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else pl_module


def select_linear_layers(model: nn.Module, modules: Modules) -> list[DeployedLayer]:
    """The deployed layers of ``model`` under the selection ``modules`` (quantized ones and every LoRA layer).

    Raises:
        ValueError: if the selection holds no trainable or adapted layer (the message lists the linear
            layers there are), or for a LoRA layer whose base is trainable, merged in place, or DoRA.
    """
    layers = deployed_layers(model, modules)
    watched = [layer for layer in layers if layer.quantized]
    if not any(layer.source != "frozen" for layer in watched):
        names = [layer.name for layer in deployed_layers(model, lambda name, module: True)]
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        what = "no linear layer" if not watched else "only frozen linear layers without an adapter"
        raise ValueError(
            f"`modules`={modules!r} selects {what} of {type(model).__name__}, so there is no update to "
            f"measure. Its linear layers are: {shown}. Pass names or a regex matching some of them, or "
            "`modules=None`."
        )
    return layers


def delta_buffer(layers: Sequence[DeployedLayer]) -> torch.Tensor | None:
    """One flat fp32 buffer that holds the largest LoRA layer's ``ΔW``, for one check of all layers; twice
    that over a 4-bit base, whose decoded ``W0`` goes in the second half (:meth:`DeployedLayer.survival`)."""
    lora = [layer for layer in layers if layer.source == "lora"]
    if not lora:
        return None
    largest = max(lora, key=lambda layer: layer.numel)
    halves = 2 if any(layer.base_format is not None for layer in lora) else 1
    return torch.empty(halves * largest.numel, dtype=torch.float32, device=largest.linear.weight.device)


@torch.no_grad()
def prepare_references(
    layers: list[DeployedLayer], schemes: Sequence[Scheme], snapshot: dict[str, torch.Tensor]
) -> None:
    """Fill in each watched layer's host copy of ``W0`` (snapshot layers) and its cached ``Q(W0)`` per scheme.

    ``snapshot`` maps names to saved ``W0`` (from a checkpoint); layers missing from it copy their current
    weight. Work and memory are one layer at a time on the device; the results live in host RAM.
    """
    for layer in layers:
        if layer.quantized:
            layer.cache_references(schemes, snapshot.get(layer.name))
