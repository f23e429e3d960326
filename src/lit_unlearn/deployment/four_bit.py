"""The two models a QLoRA run deploys: its merge re-quantized to the base's 4-bit format, and in full precision.

peft merges a LoRA adapter into a bitsandbytes 4-bit base by decoding the base, adding ``ΔW`` and
re-quantizing the sum (``Linear4bit.merge``, which warns that generations may differ "due to rounding
errors"); :func:`requantize_merged_` does the same with the base decoded as a GPU decodes it
(:func:`~lit_unlearn.quantization.bnb_decode.dequantize_params4bit`), so the result does not depend on the
CPU it runs on. :func:`dequantized_merged_state` is the full-precision alternative: every 4-bit layer
decoded, each adapted one plus its update, in the dtype the model is saved in. Both read the merged weight
from :class:`~lit_unlearn.deployment.DeployedLayer`, as the survival check and the evaluation do.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_unlearn.adapters import is_peft_model
from lit_unlearn.deployment.layers import deployed_layers

__all__ = ["dequantized_merged_state", "requantize_merged_"]


@torch.no_grad()
def requantize_merged_(peft_model: nn.Module) -> nn.Module:
    """Merge each LoRA adapter into its 4-bit base and re-quantize it in the base's format; return the plain model.

    In place, as ``merge_and_unload`` is: every adapted ``Linear4bit`` gets a new ``Params4bit`` holding
    ``Q(W0 + ΔW)`` (quant type, block size and double quantization of the base), the adapters are removed,
    and the unwrapped model is returned. The codes are those bitsandbytes' quantizer writes on the weight's
    device, as peft's merge does there: for nf4 the same on a CPU and a GPU (up to a weight exactly on a
    code's edge, where a GPU's fast-math ``1 / absmax`` may round otherwise), for fp4 not on weights at or
    next to one of ``dQuantizeFP4``'s pivots, nor on the smallest ones (see
    :mod:`lit_unlearn.quantization.bnb_decode`). Merge on the GPU that will serve an fp4 model.
    """
    import bitsandbytes as bnb

    if not is_peft_model(peft_model):
        raise ValueError(f"{type(peft_model).__name__} has no LoRA adapter to merge into a 4-bit base.")
    for layer in deployed_layers(peft_model):
        if layer.lora is None or layer.base_format is None:
            continue
        old = layer.linear.weight
        merged = layer.merged().contiguous()
        fresh = bnb.nn.Params4bit(
            merged.to("cpu"),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=layer.linear,
        )
        layer.linear.weight = fresh.to(old.device)
    return peft_model.unload()


@torch.no_grad()
def dequantized_merged_state(peft_model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``{name.weight: tensor}`` of every 4-bit layer of the merged model in full precision (``dtype``).

    Adapted layers hold ``W0 + ΔW`` (the decoded base plus the float32 update, summed as peft's 4-bit merge
    sums them) rounded once to ``dtype``; the other 4-bit layers their decoded base. Load a full-precision
    copy of the base and overwrite these weights to get the merged model a 16-bit deployment serves.
    """
    every_linear = deployed_layers(peft_model, lambda name, module: True)
    return {f"{layer.name}.weight": layer.merged().to(dtype) for layer in every_linear if layer.base_format is not None}
