"""A model computing as its deployment: the deployed weights of :class:`DeployedLayer` swapped in.

:func:`deployed_model` is the one way lit-unlearn runs a model as deployed, for the functional survival
check and for evaluation alike. Two ways to swap, one weight: ``lazy=False`` computes every deployed
weight first and swaps them all in (fast for generation, one quantized copy of the selected layers in
memory); ``lazy=True`` swaps each layer's weight in only while that layer runs (one layer's copy at a
time, for a few probe passes). Either way ``ΔW`` is read before any adapter is switched off — the code
order below enforces it — and every weight is restored exactly on exit, also when the body raises.

A bitsandbytes ``Linear4bit`` base (QLoRA) holds packed codes, not a weight to swap: such a layer computes
its deployed weight as ``Linear4bit`` computes its own (:func:`dense_forwards`), and LLM.int8 layers
compute bitsandbytes' int8 matmul from their codes (:func:`int8_forwards`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_unlearn.adapters import adapters_disabled, is_peft_model, lora_layers
from lit_unlearn.deployment.layers import DeployedLayer, deployed_layers, deployed_name
from lit_unlearn.quantization import QuantizedTensor, Scheme
from lit_unlearn.quantization.llm_int8 import llm_int8_linear
from lit_unlearn.swap import swapped_weights

__all__ = ["around_forward", "base_dtype", "dense_forwards", "deployed_model", "int8_forwards", "merged_state_dict"]

ContextFactory = Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
@torch.no_grad()
def deployed_model(
    model: nn.Module,
    layers: Sequence[DeployedLayer],
    scheme: Scheme | None,
    original: bool = False,
    lazy: bool = False,
    replaced: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Run ``model`` as the deployment of its current (or original) weights quantized with ``scheme``.

    Current: each LoRA layer among ``layers`` computes with its merged weight (quantized where the layer
    is selected) and its adapter off; each other selected layer with ``Q(W)``. Original: every adapter of
    the model off, and each layer at ``W0`` or ``Q(W0)``. ``scheme=None`` is full precision: the original
    model, or the current one with its LoRA layers merged. For LLM.int8 (``int8``) a selected layer does
    not swap in a weight but computes bitsandbytes' int8 matmul (activations quantized row-wise, outlier
    columns in 16-bit) from its codes, see :func:`int8_forwards`.

    ``replaced`` (current weights, eager swaps of weight-only schemes): per layer name, a full-precision
    weight deployed instead of the layer's merge, e.g. :func:`~lit_unlearn.deployment.floor.floored_weights`.
    """
    # LLM.int8 quantizes activations too: its selected layers compute `llm_int8_linear` from the codes.
    int8 = scheme is not None and scheme.family == "llm_int8"
    if replaced and (original or lazy or int8 or any(layer.base_format is not None for layer in layers)):
        raise ValueError(
            "`replaced` weights are deployed in place of the current merge, eagerly, under a weight-only "
            "scheme, over a dense base: pass original=False, lazy=False and a scheme other than 'int8'."
        )
    owners = [m for _, m in lora_layers(model)] if original and is_peft_model(model) else []
    if not lazy:
        param_names = {id(p): n for n, p in model.named_parameters()}
        weights: dict[str, torch.Tensor] = {}
        codes: dict[nn.Linear, QuantizedTensor] = {}
        dense: dict[nn.Linear, torch.Tensor] = {}
        for layer in layers:
            how = layer.computes_with(scheme)
            if how == "codes":
                codes[layer.linear] = layer.quantized_weight(scheme, original)
                continue
            if how == "dense":
                dense[layer.linear] = layer.weight(scheme, original)
                continue
            # A weight shared by several modules (tied) has one parameter name and is deployed once.
            key = param_names[id(layer.linear.weight)]
            if key not in weights:
                own = None if replaced is None else replaced.get(layer.name)
                weights[key] = layer.weight(scheme, original) if own is None else layer.deploy(own, scheme)
        # Every ΔW has been read above; only now are the adapters switched off.
        current_owners = [] if original else [layer.lora for layer in layers if layer.lora is not None]
        with adapters_disabled(owners + current_owners), swapped_weights(model, weights), int8_forwards(codes), \
                dense_forwards(dense):
            yield model
        return

    # A module's forward is looked up before its pre-hooks run, so the int8 layers' forwards are replaced
    # for the whole context and read the codes their layer's pre-hook leaves here.
    current_codes: dict[nn.Linear, QuantizedTensor] = {}
    current_dense: dict[nn.Linear, torch.Tensor] = {}

    def computing(layer: DeployedLayer) -> contextlib.AbstractContextManager:
        @contextlib.contextmanager
        def context() -> Iterator[None]:
            # ΔW read while this layer's adapter is still on.
            how = layer.computes_with(scheme)
            if how == "codes":
                current_codes[layer.linear] = layer.quantized_weight(scheme, original)
                swap: contextlib.AbstractContextManager = contextlib.nullcontext()
            elif how == "dense":
                current_dense[layer.linear] = layer.weight(scheme, original)
                swap = contextlib.nullcontext()
            else:
                swap = swapped_weights(layer.linear, {"weight": layer.weight(scheme, original)})
            mine = [layer.lora] if layer.lora is not None and not original else []
            try:
                with adapters_disabled(mine), swap:
                    yield
            finally:
                current_codes.pop(layer.linear, None)
                current_dense.pop(layer.linear, None)

        return context()

    contexts = {(layer.linear if original else layer.forward_module): (lambda layer=layer: computing(layer))
                for layer in layers}
    int8_linears = [layer.linear for layer in layers if layer.computes_with(scheme) == "codes"]
    dense_linears = [layer.linear for layer in layers if layer.computes_with(scheme) == "dense"]
    with adapters_disabled(owners), int8_forwards(current_codes, int8_linears), \
            dense_forwards(current_dense, dense_linears), around_forward(contexts):
        yield model


@contextlib.contextmanager
def int8_forwards(codes: Mapping[nn.Linear, QuantizedTensor], linears: Sequence[nn.Linear] | None = None
                  ) -> Iterator[None]:
    """While active, each linear layer computes LLM.int8's matmul from its int8 codes and row scales
    (:func:`~lit_unlearn.quantization.llm_int8.llm_int8_linear`), as a ``load_in_8bit`` layer does.

    ``codes`` is read at each call, so it may be filled while the context is open; ``linears`` (default:
    the keys of ``codes``) are the layers whose forward is replaced.
    """

    def forward(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        def int8_forward(x: torch.Tensor) -> torch.Tensor:
            q = codes[linear]
            return llm_int8_linear(x, q.codes, q.scales, linear.bias)

        return int8_forward

    with _forwards({linear: forward(linear) for linear in (codes if linears is None else linears)}):
        yield


@contextlib.contextmanager
def dense_forwards(weights: Mapping[nn.Linear, torch.Tensor], linears: Sequence[nn.Linear] | None = None
                   ) -> Iterator[None]:
    """While active, each linear layer computes with the dense weight ``weights[layer]``.

    For bitsandbytes' ``Linear4bit`` layers, whose packed weight cannot be swapped for a float one, it
    computes as ``Linear4bit`` does with its decoded weight: input, weight and bias in the layer's
    ``compute_dtype`` (when it has one), the output cast back to the input's dtype. ``weights`` is read at
    each call; ``linears`` (default: its keys) are the layers whose forward is replaced.
    """

    def forward(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        def dense_forward(x: torch.Tensor) -> torch.Tensor:
            dtype = getattr(linear, "compute_dtype", None) or x.dtype
            bias = None if linear.bias is None else linear.bias.to(dtype)
            return F.linear(x.to(dtype), weights[linear].to(dtype), bias).to(x.dtype)

        return dense_forward

    with _forwards({linear: forward(linear) for linear in (weights if linears is None else linears)}):
        yield


@contextlib.contextmanager
def _forwards(replacements: Mapping[nn.Module, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Each module's forward replaced while active (an instance attribute shadows the class's forward)."""
    modules = list(replacements)
    try:
        for module in modules:
            module.forward = replacements[module]
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


@contextlib.contextmanager
def around_forward(contexts: Mapping[nn.Module, ContextFactory]) -> Iterator[None]:
    """While active, every call of each module runs inside a fresh context from its factory.

    The swap-in/measure/swap-back of :mod:`lit_unlearn.swap`, narrowed to the duration of one module's
    forward: a replacement weight exists only while its own layer runs. Layers must be called as
    modules, as every ``transformers`` model does.
    """
    open_contexts: dict[int, list[contextlib.AbstractContextManager]] = {}

    def enter(factory: ContextFactory) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            context = factory()
            context.__enter__()
            open_contexts.setdefault(id(module), []).append(context)

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        open_contexts[id(module)].pop().__exit__(None, None, None)

    handles = []
    try:
        for module, factory in contexts.items():
            handles.append(module.register_forward_pre_hook(enter(factory)))
            handles.append(module.register_forward_hook(leave))
        yield
    finally:
        for handle in handles:
            handle.remove()
        # A forward that raised leaves its layer swapped; put every original back before re-raising.
        for stack in open_contexts.values():
            while stack:
                stack.pop().__exit__(None, None, None)


@torch.no_grad()
@torch.no_grad()
def merge_into_base(model: nn.Module, progress: bool = False) -> nn.Module:
    """The plain model a LoRA deployment ships, built in place: each adapted layer's weight becomes its
    deployed merge (:meth:`DeployedLayer.merged`, ``W0 + ΔW`` rounded once to the base dtype as peft merges),
    one layer at a time, then the adapters are removed (peft's ``unload``). Export writes this model, so
    the file holds the weights its survival report describes.

    Raises:
        ValueError: as :func:`deployed_layers` does, for a DoRA adapter or a layer merged in place.
    """
    from tqdm.auto import tqdm

    adapted = [layer for layer in deployed_layers(model) if layer.lora is not None]
    for layer in tqdm(adapted, desc="Merging the adapter", unit="layer", disable=not progress):
        layer.linear.weight.data = layer.merged()
    return model.unload()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain (non-peft) model that ``merge_and_unload`` would produce, without changing
    ``model``: adapted weights merged as :func:`~lit_unlearn.deployment.merge` does (in the base dtype),
    LoRA matrices dropped, names without peft's wrappers."""
    if not is_peft_model(model):
        return dict(model.state_dict())
    merged = {layer.name: layer.merged() for layer in deployed_layers(model) if layer.lora is not None}
    lora_names = [name for name, _ in lora_layers(model)]
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        inside_lora = any(module_name == n or module_name.startswith(f"{n}.") for n in lora_names)
        if inside_lora and not module_name.endswith(".base_layer"):
            continue
        name = deployed_name(module_name)
        state[f"{name}.{leaf}"] = merged[name] if leaf == "weight" and name in merged else value
    return state


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a deployed copy of ``model`` has: that of its frozen weights (LoRA runs keep the trainable
    adapter in float32 over a possibly bf16 base), else of most of its weights."""
    frozen = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    dtypes = frozen or [p.dtype for p in model.parameters() if p.is_floating_point()]
    return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32
