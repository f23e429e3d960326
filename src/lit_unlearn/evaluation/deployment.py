"""Evaluation's precisions and quantizers; the deployed model itself lives in :mod:`lit_unlearn.deployment`.

P1's protocol merges the adapter into the base weights (``merge_and_unload``) *before* post-training
quantization, so 4-bit sees ``Q(W0 + ΔW)``, not ``Q(W0) + ΔW``. :func:`~lit_unlearn.deployment.deployed_weights`
reproduces that without building a second model (re-exported here for evaluation's callers).

:func:`load_bitsandbytes` is the CUDA alternative: it writes the merged model to a temporary directory
and reloads it through transformers' ``BitsAndBytesConfig``, i.e. with the real bitsandbytes kernels
that deployment would use.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import torch
from torch import nn

from lit_unlearn.adapters import is_peft_model
from lit_unlearn.deployment import FULL, PRECISIONS, Deployment, base_dtype, deployed_weights, merged_state_dict
from lit_unlearn.deployment.bitsandbytes import BITSANDBYTES_FORMATS, bitsandbytes_config
from lit_unlearn.deployment.config import unsupported

__all__ = [
    "BITSANDBYTES_PRECISIONS",
    "PRECISIONS",
    "QUANTIZERS",
    "Precision",
    "Quantizer",
    "base_dtype",
    "check_precision",
    "deployed_weights",
    "load_bitsandbytes",
    "merged_state_dict",
]

# The precisions are the deployments' (:data:`lit_unlearn.deployment.PRECISIONS`): "full", LLM.int8,
# bitsandbytes' nf4/fp4, round-to-nearest int4, then every other scheme.
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Quantizer = Literal["fake", "bitsandbytes"]
QUANTIZERS: tuple[str, ...] = ("fake", "bitsandbytes")
# bitsandbytes has no plain round-to-nearest int4 format.
BITSANDBYTES_PRECISIONS: tuple[str, ...] = (FULL, *BITSANDBYTES_FORMATS)


def check_precision(precision: str | Deployment, quantizer: str = "fake") -> Deployment:
    """The :class:`~lit_unlearn.deployment.Deployment` of ``precision`` (parsed by
    :meth:`~lit_unlearn.deployment.Deployment.parse`), checked to be one ``quantizer`` runs.

    Raises:
        ValueError: naming the bad value and the allowed ones.
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"`quantizer`={quantizer!r} is not supported; choose one of {', '.join(map(repr, QUANTIZERS))} "
            "('fake' runs anywhere; 'bitsandbytes' needs CUDA)."
        )
    deployment = Deployment.parse(precision)
    if quantizer == "bitsandbytes" and deployment.precision not in BITSANDBYTES_PRECISIONS:
        hint = " (bitsandbytes has no int4 round-to-nearest; use quantizer='fake' for it)"
        raise unsupported("precision", deployment.precision, BITSANDBYTES_PRECISIONS, hint if deployment.precision == "int4" else "")
    return deployment


def load_bitsandbytes(
    model: nn.Module, precision: str | Deployment, compute_dtype: torch.dtype | None = None
) -> nn.Module:
    """A new model: ``model`` merged and reloaded through transformers' ``BitsAndBytesConfig`` on CUDA.

    ``compute_dtype`` (default: the dtype of the model's frozen base) is the dtype of activations and of
    the weights bitsandbytes does not quantize.

    ``int8`` is LLM.int8 (``load_in_8bit``, bitsandbytes' default outlier threshold 6.0, as deployment
    uses it); ``nf4``/``fp4`` are ``load_in_4bit`` with that quant type (blockwise absmax, block 64).
    bitsandbytes skips the output head, like :func:`deployed_weights`' default filter.

    Raises:
        RuntimeError: without CUDA.
        ValueError: for ``full`` or ``int4`` (not bitsandbytes formats).
    """
    # A Deployment that evaluate checked passes through Deployment.parse unchanged.
    precision = check_precision(precision, "bitsandbytes").precision
    if precision == "full":
        raise ValueError("`precision`='full' needs no bitsandbytes reload; evaluate the model itself.")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "quantizer='bitsandbytes' loads the model with real bitsandbytes kernels and needs a CUDA "
            "device; use quantizer='fake' (a pure-torch simulation of the same formats, tested bit for bit "
            "against bitsandbytes) on this machine."
        )
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    base = model.get_base_model() if is_peft_model(model) else model
    # Activations keep the model's dtype (bitsandbytes' 4-bit kernels accept fp32, bf16 and fp16), so
    # the two quantizers differ only in how weights are stored and multiplied.
    dtype = compute_dtype or base_dtype(model)
    config = bitsandbytes_config(precision, dtype)
    # `copy=True` gives tied weights their own storage: safetensors stores each tensor once, and
    # `from_pretrained` ties them again from the config.
    state = {
        key: value.detach()
        .to("cpu", dtype if value.is_floating_point() else value.dtype, copy=True)
        .contiguous()
        for key, value in merged_state_dict(model).items()
    }
    with tempfile.TemporaryDirectory(prefix="lit-unlearn-merged-") as tmp:
        base.config.save_pretrained(tmp)
        save_file(state, f"{tmp}/model.safetensors", metadata={"format": "pt"})
        del state
        loaded = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=config, dtype=dtype, device_map={"": torch.cuda.current_device()}
        )
    return loaded.eval()
