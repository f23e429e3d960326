"""The deployed weight, in one place: what a deployment of the model holds, for every measurement.

* :class:`DeployedLayer` and :func:`deployed_layers` (``layers.py``): the deployed layers, their names,
  ``W0`` and ``ΔW`` sources, the merge (:func:`merge`, peft's arithmetic in the base dtype, defined in
  ``lit_unlearn.quantization.merge`` so the streamed statistics share it), cached ``Q(W0)``, the deployed
  weight per scheme; :func:`output_head` is the one rule for the layer a deployment keeps in full precision.
* :func:`deployed_model` (``model.py``): the model computing with those weights (eagerly or one layer at
  a time); :func:`deployed_weights` its public form for a precision; :func:`merged_state_dict`.
* :class:`Deployment` (``config.py``): precision + block size + layer selection, the vocabulary every entry
  point shares.
* :func:`~lit_unlearn.deployment.four_bit.requantize_merged_` and
  :func:`~lit_unlearn.deployment.four_bit.dequantized_merged_state` (``four_bit.py``): the two models a LoRA
  adapter over a bitsandbytes 4-bit base (QLoRA) deploys — its merge re-quantized, and in full precision.
* :class:`UnsupportedStrategyError` (``strategy.py``): the one error for a strategy that shards weights.
* :func:`~lit_unlearn.deployment.qat.quantization_aware` (``qat.py``): forward passes through the
  straight-through deployed weights, for quantization-aware unlearning.

The survival check (weight space and function space), ``QuantizedEvaluation``/``evaluate`` and
``lit-unlearn export`` all read weights through this package, so a new source of ``W0`` or a new scheme
is added here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from lit_unlearn.deployment.config import FULL, Deployment
from lit_unlearn.deployment.layers import (
    DeployedLayer,
    Modules,
    Source,
    deployed_layers,
    deployed_name,
    merge,
    output_head,
)
from lit_unlearn.deployment.model import around_forward, base_dtype, deployed_model, merged_state_dict
from lit_unlearn.deployment.strategy import (
    SHARDING_STRATEGIES,
    UnsupportedStrategyError,
    check_strategy,
    shards_weights,
)
from lit_unlearn.quantization import SCHEMES
from lit_unlearn.sharding import is_sharded

__all__ = [
    "FULL",
    "SHARDING_STRATEGIES",
    "DeployedLayer",
    "Deployment",
    "Modules",
    "Source",
    "UnsupportedStrategyError",
    "around_forward",
    "as_deployment",
    "as_deployments",
    "base_dtype",
    "check_strategy",
    "deployed_layers",
    "deployed_model",
    "deployed_name",
    "deployed_weights",
    "merge",
    "merged_state_dict",
    "output_head",
    "shards_weights",
]


def as_deployment(
    precision: str | Deployment,
    block_size: int | None = None,
    modules: Modules = None,
) -> Deployment:
    """A :class:`Deployment` from one, or from its three parts (the keyword form of every entry point)."""
    if isinstance(precision, Deployment):
        if block_size is not None or modules is not None:
            raise ValueError(
                "Pass either a `Deployment` or `block_size`/`modules`, not both: the Deployment already "
                f"says them ({precision})."
            )
        return precision
    return Deployment(precision, block_size, modules)


def as_deployments(
    items: str | Deployment | Sequence[str | Deployment],
    block_size: int | None = None,
    modules: Modules = None,
    *,
    what: str = "schemes",
) -> list[Deployment]:
    """One :class:`Deployment` per item: a name (with ``block_size`` and ``modules``) or a Deployment.

    The shared vocabulary of the callbacks' ``schemes``/``precisions`` arguments. Each name may appear
    once (its metrics are keyed by it), and a Deployment's ``modules`` must be those of the callback.

    Raises:
        ValueError: for an empty list, an unknown name, a repeated one, or a Deployment that selects other
            layers than ``modules``.
    """
    listed = [items] if isinstance(items, (str, Deployment)) else list(items)
    if not listed:
        raise ValueError(f"`{what}` is empty; name at least one of {', '.join(map(repr, (FULL, *SCHEMES)))}.")
    out = []
    for item in listed:
        if isinstance(item, Deployment):
            if item.modules is not None and item.modules != modules:
                raise ValueError(
                    f"`{what}` holds {item}, which selects other layers than `modules`={modules!r}; one "
                    "callback quantizes one set of layers. Leave the Deployment's `modules` unset."
                )
            out.append(Deployment(item.precision, item.block_size, modules))
        elif isinstance(item, str):
            out.append(Deployment(item, None if item == FULL else block_size, modules))
        else:
            raise TypeError(f"`{what}` holds {item!r}; give scheme names or `Deployment`s.")
    names = [d.precision for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"`{what}`={names} names a precision twice; list each once.")
    return out


@contextlib.contextmanager
@torch.no_grad()
def deployed_weights(
    model: nn.Module,
    precision: str | Deployment,
    block_size: int | None = None,
    filter_fn: Modules | Callable[[str, nn.Module], bool] = None,
) -> Iterator[nn.Module]:
    """Run ``model`` inside this context as it would be deployed at ``precision`` (fake-quantized).

    For a peft model the adapter is merged first, as ``merge_and_unload`` would (in the base's dtype):
    each adapted base weight becomes ``Q(W0 + ΔW)`` and the adapter is disabled. Every other selected
    linear weight becomes ``Q(W)``. At ``"full"`` a LoRA model runs merged (``W0 + ΔW`` in the base's
    dtype, the model export writes) and any other model unchanged. All weights are restored exactly on
    exit, also when the body raises.

    Args:
        model: A Hugging Face causal LM or a peft model wrapping one.
        precision: ``"full"``, a scheme name, or a :class:`Deployment`.
        block_size: Quantization block (group) size; ``None`` takes the scheme's default.
        filter_fn: The layers to quantize: ``(deployed_name, module) -> bool`` or any
            :data:`Modules` selection; names are those of the merged model. ``None``: every linear layer
            except the output head, as bitsandbytes does.

    Raises:
        ValueError: for an unknown ``precision``, a LoRA layer merged in place, or a DoRA adapter.
    """
    deployment = as_deployment(precision, block_size, filter_fn)
    layers = deployment.layers(model)
    if deployment.scheme is None:
        # Full precision: a LoRA model runs merged, as export writes it; anything else as it is.
        layers = [layer for layer in layers if layer.lora is not None]
        if not layers:
            yield model
            return
    # A sharded model's weights are whole only while their block runs: each is deployed inside its forward.
    lazy = any(is_sharded(p) for p in model.parameters())
    with deployed_model(model, layers, deployment.scheme, lazy=lazy) as deployed:
        yield deployed
