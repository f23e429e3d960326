"""The model as it would be deployed at a given precision: LoRA merged, then quantized.

P1's protocol merges the adapter into the base weights (``merge_and_unload``) *before* post-training
quantization, so 4-bit sees ``Q(W0 + ΔW)``, not ``Q(W0) + ΔW``. :func:`deployed_weights` reproduces
that without building a second model: every adapted base weight is swapped for ``Q(W0 + ΔW)`` and the
adapter is disabled; every other selected linear weight becomes ``Q(W)``. The swap keeps parameter
identity and restores the original storage on exit (``lit_unlearn.swap``), so training continues
bit-identically afterwards.

:func:`load_bitsandbytes` is the CUDA alternative: it writes the merged model to a temporary directory
and reloads it through transformers' ``BitsAndBytesConfig``, i.e. with the real bitsandbytes kernels
that deployment would use.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from lit_unlearn.adapters import is_peft_model, lora_deltas, reference_mode
from lit_unlearn.swap import swapped_weights

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

Precision = Literal["full", "int8", "nf4", "fp4", "int4"]
Quantizer = Literal["fake", "bitsandbytes"]

# "full" is the unquantized model; the rest are lit_unlearn.quantization schemes: LLM.int8 row-wise
# absmax, bitsandbytes' 4-bit nf4/fp4 (blockwise absmax), symmetric round-to-nearest int4 (group 128).
PRECISIONS: tuple[str, ...] = ("full", "int8", "nf4", "fp4", "int4")
QUANTIZERS: tuple[str, ...] = ("fake", "bitsandbytes")
# bitsandbytes has no plain round-to-nearest int4 format.
BITSANDBYTES_PRECISIONS: tuple[str, ...] = ("full", "int8", "nf4", "fp4")

FilterFn = Callable[[str, nn.Module], bool]
_PEFT_PREFIX = "base_model.model."


def check_precision(precision: str, quantizer: str = "fake") -> None:
    """Raise a ``ValueError`` naming the bad value and the allowed ones."""
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"`quantizer`={quantizer!r} is not supported; choose one of {', '.join(map(repr, QUANTIZERS))} "
            "('fake' runs anywhere; 'bitsandbytes' needs CUDA)."
        )
    allowed = PRECISIONS if quantizer == "fake" else BITSANDBYTES_PRECISIONS
    if precision not in allowed:
        hint = (
            " (bitsandbytes has no int4 round-to-nearest; use quantizer='fake' for it)"
            if precision == "int4"
            else ""
        )
        raise ValueError(
            f"`precision`={precision!r} is not supported{hint}; choose one of "
            f"{', '.join(map(repr, allowed))}."
        )


def _deployed_name(module_name: str) -> str:
    # The name the module has once the adapter is merged: no peft prefix, no `.base_layer`.
    name = module_name.removeprefix(_PEFT_PREFIX)
    return name.removesuffix(".base_layer")


def _lora_layer_names(model: nn.Module) -> set[str]:
    if not is_peft_model(model):
        return set()
    from peft.tuners.lora import LoraLayer

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if getattr(module, "merged", False):
                raise ValueError(
                    f"LoRA layer {name!r} is merged into its base weight in place, so the adapter cannot be "
                    "disabled without changing the weights. Call `model.unmerge_adapter()` first, or "
                    "evaluate the merged model (`merge_and_unload()`) as a plain model."
                )
            names.add(name)
    return names


def _deployed_linears(model: nn.Module) -> Iterator[tuple[str, str, nn.Linear]]:
    """``(parameter-owning module name, deployed name, module)`` for each linear layer that a merged model
    would have; LoRA's own A/B matrices are not part of a deployed model."""
    lora_layers = _lora_layer_names(model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        owner = name.rpartition(".")[0] if name.endswith(".base_layer") else None
        inside_lora = any(name.startswith(f"{layer}.") for layer in lora_layers)
        if inside_lora and owner not in lora_layers:
            continue
        yield name, _deployed_name(name), module


@torch.no_grad()
def _merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``W0 + ΔW`` of every active LoRA layer, keyed by the deployed module name
    (``model.layers.0.mlp.up_proj``)."""
    return {name: w0 + delta for name, w0, delta in lora_deltas(model)}


def _default_filter(model: nn.Module, default_filter: FilterFn) -> FilterFn:
    # As `quantize_model_` and transformers do: besides the name rule, never the module that
    # `get_output_embeddings()` returns (for a peft model: the linear layer peft may have wrapped).
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    head = getattr(head, "base_layer", head)

    def selected(name: str, module: nn.Module) -> bool:
        return module is not head and default_filter(name, module)

    return selected


@contextlib.contextmanager
@torch.no_grad()
def deployed_weights(
    model: nn.Module, precision: str, block_size: int | None = None, filter_fn: FilterFn | None = None
) -> Iterator[nn.Module]:
    """Run ``model`` inside this context as it would be deployed at ``precision`` (fake-quantized).

    For a peft model the adapter is merged first, as ``merge_and_unload`` would: each adapted base weight
    becomes ``Q(W0 + ΔW)`` and the adapter is disabled. Every other linear weight selected by
    ``filter_fn`` becomes ``Q(W)``. At ``"full"`` the model runs unchanged (a LoRA model computes
    ``W0 x + ΔW x``, equal to the merged model up to float rounding). All weights are restored exactly
    on exit, also when the body raises.

    Args:
        model: A Hugging Face causal LM or a peft model wrapping one.
        precision: One of :data:`PRECISIONS`.
        block_size: Quantization block (group) size; ``None`` takes the scheme's default.
        filter_fn: ``(deployed_name, module) -> bool`` choosing the linear layers to quantize; names are
            those of the merged model. ``None`` uses ``lit_unlearn.quantization.default_filter`` (every
            linear layer except the output head, as bitsandbytes does).

    Raises:
        ValueError: for an unknown ``precision``, or a LoRA layer merged in place.
    """
    check_precision(precision)
    if precision == "full":
        yield model
        return
    from lit_unlearn.quantization import default_filter, fake_quantize, get_scheme

    scheme = get_scheme(precision, block_size)
    selected = filter_fn or _default_filter(model, default_filter)
    linears = {deployed: module for _, deployed, module in _deployed_linears(model)}
    # A weight shared by several modules (tied) has one parameter name and is quantized once.
    param_names = {id(p): n for n, p in model.named_parameters()}
    replacements: dict[str, torch.Tensor] = {}
    # One merged weight exists at a time; only the quantized copies that get swapped in accumulate.
    for deployed, w0, delta in lora_deltas(model):
        if deployed not in linears:
            raise ValueError(
                f"LoRA layer {deployed!r} wraps no nn.Linear, so its merged weight cannot be deployed; adapt "
                "only linear projections (`lora.target_modules`)."
            )
        module = linears.pop(deployed)
        weight = w0 + delta
        replacements[param_names[id(module.weight)]] = (
            fake_quantize(weight, scheme) if selected(deployed, module) else weight
        )
    for deployed, module in linears.items():
        key = param_names[id(module.weight)]
        if key not in replacements and selected(deployed, module):
            replacements[key] = fake_quantize(module.weight, scheme)
    adapter_off = reference_mode(model) if is_peft_model(model) else contextlib.nullcontext()
    with swapped_weights(model, replacements), adapter_off:
        yield model


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain (non-peft) model that ``merge_and_unload`` would produce, without changing
    ``model``: adapted weights are ``W0 + ΔW``, LoRA matrices are dropped, names lose peft's wrappers."""
    if not is_peft_model(model):
        return dict(model.state_dict())
    merged = _merged_weights(model)
    lora_layers = _lora_layer_names(model)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        inside_lora = any(
            module_name == layer or module_name.startswith(f"{layer}.") for layer in lora_layers
        )
        if inside_lora and not module_name.endswith(".base_layer"):
            continue
        deployed = _deployed_name(module_name)
        state[f"{deployed}.{leaf}"] = merged[deployed] if leaf == "weight" and deployed in merged else value
    return state


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a deployed copy of ``model`` has: that of its frozen weights (LoRA runs keep the trainable
    adapter in float32 over a possibly bf16 base), else of most of its weights."""
    frozen = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    dtypes = frozen or [p.dtype for p in model.parameters() if p.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32


def load_bitsandbytes(
    model: nn.Module, precision: str, compute_dtype: torch.dtype | None = None
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
    check_precision(precision, "bitsandbytes")
    if precision == "full":
        raise ValueError("`precision`='full' needs no bitsandbytes reload; evaluate the model itself.")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "quantizer='bitsandbytes' loads the model with real bitsandbytes kernels and needs a CUDA "
            "device; use quantizer='fake' (bit-exact simulation of the same formats) on this machine."
        )
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = model.get_base_model() if is_peft_model(model) else model
    # Activations keep the model's dtype (bitsandbytes' 4-bit kernels accept fp32, bf16 and fp16), so
    # the two quantizers differ only in how weights are stored and multiplied.
    dtype = compute_dtype or base_dtype(model)
    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=precision, bnb_4bit_compute_dtype=dtype
        )
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
