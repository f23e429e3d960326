"""The deployed weight, in one place: what a deployment of the model holds, for every measurement.

* :class:`DeployedLayer` and :func:`deployed_layers` (``layers.py``): the deployed layers, their names,
  ``W0`` and ``ΔW`` sources, the merge (:func:`merge`, peft's arithmetic in the base dtype, defined in
  ``lit_unlearn.quantization.merge`` so the streamed statistics share it), cached ``Q(W0)``, the deployed
  weight per scheme; :func:`output_head` is the one rule for the layer a deployment keeps in full precision.
* :func:`deployed_model` (``model.py``): the model computing with those weights (eagerly or one layer at
  a time); :func:`merged_state_dict`, and :func:`merge_into_base`, the merged model export writes.
* :class:`Deployment` (``config.py``): precision + block size + layer selection, the vocabulary every entry
  point shares, parsed through :meth:`Deployment.parse` alone; :func:`deployed_weights`, a model as one
  deployment holds it.
* :func:`quantize_model_` and :func:`layer_schemes` (``quantize.py``): a model's weights replaced in place
  by their deployed (fake-quantized) values, and the format each layer gets.
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

from lit_unlearn.deployment.config import (
    FULL,
    PRECISIONS,
    Deployment,
    as_deployment,
    as_deployments,
    deployed_weights,
)
from lit_unlearn.deployment.layers import (
    DeployedLayer,
    Modules,
    Source,
    deployed_layers,
    deployed_name,
    merge,
    output_head,
)
from lit_unlearn.deployment.model import around_forward, base_dtype, deployed_model, merge_into_base, merged_state_dict
from lit_unlearn.deployment.quantize import layer_schemes, quantize_model_
from lit_unlearn.deployment.strategy import (
    SHARDING_STRATEGIES,
    UnsupportedStrategyError,
    check_strategy,
    shards_weights,
)

__all__ = [
    "FULL",
    "PRECISIONS",
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
    "layer_schemes",
    "merge",
    "merge_into_base",
    "merged_state_dict",
    "output_head",
    "quantize_model_",
    "shards_weights",
]
