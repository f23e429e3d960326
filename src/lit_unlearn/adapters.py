"""The peft seam: apply LoRA, read each adapted layer's effective update, and run the reference model.

Everything lit-unlearn needs from peft goes through this file, so a peft upgrade touches one place.

The reference policy π_ref of NPO and KLR is the model before unlearning. With LoRA on a frozen base
that is exactly the base with the adapter disabled (``reference_mode``), so no second copy of the
model is ever built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lit_unlearn.quantization.model import OUTPUT_HEAD_NAMES

__all__ = [
    "LoRA",
    "adapter_internals",
    "adapters_disabled",
    "apply_lora",
    "default_target_modules",
    "deployed_name",
    "is_output_head",
    "is_peft_model",
    "linear_module_names",
    "load_adapter",
    "lora_delta",
    "lora_deltas",
    "lora_product",
    "lora_layers",
    "output_head",
    "reference_mode",
]

_PEFT_PREFIX = "base_model.model."


def deployed_name(module_name: str) -> str:
    """The name a module has in the merged model: no peft ``base_model.model.`` prefix, no ``.base_layer``."""
    return module_name.removeprefix(_PEFT_PREFIX).removesuffix(".base_layer")


def output_head(model: nn.Module) -> nn.Module | None:
    """The output head a deployment keeps in full precision: ``get_output_embeddings()``, unwrapped from a
    peft layer if one wraps it; ``None`` for a model without one."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return getattr(head, "base_layer", head)


def is_output_head(name: str, module: nn.Module, head: nn.Module | None) -> bool:
    """The one rule for the layer a deployment keeps in full precision, as transformers skips it: the
    model's output embeddings (``head``, from :func:`output_head`), or a module named like an output head
    (:data:`~lit_unlearn.quantization.OUTPUT_HEAD_NAMES`, for a model that does not say which is its head)."""
    return module is head or name.rsplit(".", 1)[-1] in OUTPUT_HEAD_NAMES


@dataclass
class LoRA:
    """LoRA settings of an unlearning run.

    The defaults follow the quantization-robust LoRA recipe (P1): every linear projection of the
    transformer blocks, rank in 16–64, alpha between r/2 and 2r, dropout 0.05.

    Args:
        r: Rank of the update ``B @ A``.
        alpha: Scaling numerator; the update is ``alpha / r · B @ A`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: Dropout on the adapter input during training.
        target_modules: Names (suffixes) of the linear modules to adapt. ``None`` adapts every linear
            projection of the blocks (for Llama: q, k, v, o, gate, up, down), never the output head.
        use_rslora: Rank-stabilised scaling ``alpha / sqrt(r)``.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = field(default=None)
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"`lora.r` must be a positive integer, got {self.r}.")
        if self.alpha <= 0:
            raise ValueError(f"`lora.alpha` must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`lora.dropout` must be in [0, 1), got {self.dropout}.")


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of the model's ``nn.Linear`` modules, output head excluded, sorted."""
    head = output_head(model)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and not is_output_head(name, m, head)}
    return sorted(names)


def default_target_modules(model: nn.Module) -> list[str]:
    """Every linear projection of the blocks — for Llama ``q,k,v,o,gate,up,down_proj``."""
    names = linear_module_names(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear modules besides its output head, so LoRA has nothing to "
            "adapt. Use full-parameter unlearning (`lora: null`)."
        )
    return names


def apply_lora(model: nn.Module, lora: LoRA) -> nn.Module:
    """Wrap ``model`` in a peft ``PeftModel`` with a trainable LoRA adapter; the base stays frozen.

    Raises:
        ValueError: if a requested target module matches no linear module of the model; the message
            lists the model's linear module names.
    """
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    targets = list(lora.target_modules) if lora.target_modules else default_target_modules(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(
            f"`lora.target_modules` {missing} match no linear module of {type(model).__name__}. "
            f"Its linear modules are {available}; pick from these or leave `target_modules` unset to adapt all."
        )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_rslora=lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """``model`` with the saved peft adapter of ``directory`` applied (peft's ``PeftModel.from_pretrained``)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(directory))


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` carries at least one peft LoRA layer."""
    return any(True for _ in lora_layers(model))


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(module name, LoraLayer)`` for every peft LoRA layer of ``model``, in ``named_modules`` order."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def adapter_internals(model: nn.Module) -> set[int]:
    """``id`` of every module inside a LoRA layer that is not its base layer (the A/B matrices, dropout).

    They are part of ``ΔW``, not layers a deployment has.
    """
    internal: set[int] = set()
    for _, owner in lora_layers(model):
        base = set(map(id, owner.get_base_layer().modules()))
        internal.update(id(m) for m in owner.modules() if m is not owner and id(m) not in base)
    return internal


@contextlib.contextmanager
def adapters_disabled(owners: list[nn.Module] | tuple[nn.Module, ...]) -> Iterator[None]:
    """Run the given LoRA layers as their bare base layers, then restore them exactly.

    Per layer rather than :func:`reference_mode`: that needs the ``PeftModel`` wrapper, and a deployed
    model may switch off some layers only. peft's ``enable_adapters`` also sets ``requires_grad``; the
    flags are put back as they were.
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


def check_mergeable(layer: nn.Module, name: str | None = None) -> None:
    """Raise unless the layer's merge is ``W0 + ΔW`` (plain LoRA): DoRA rescales the merged weight."""
    dora = [a for a in layer.active_adapters if layer.use_dora.get(a, False)]
    if dora:
        what = f"LoRA layer {name!r}" if name else "A LoRA layer"
        raise ValueError(
            f"{what} uses DoRA (adapter {dora[0]!r}): its merged weight is "
            "m · (W0 + ΔW) / ‖W0 + ΔW‖, not W0 + ΔW, and lit-unlearn's deployed weight (survival check, "
            "evaluation, export) is the plain LoRA merge. Train with `use_dora=False`, or merge the DoRA "
            "adapter (`merge_and_unload`) and measure the merged model as a full-parameter one."
        )


@torch.no_grad()
def lora_delta(layer: nn.Module, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """``scaling · B @ A`` of one peft ``LoraLayer``, summed over its active adapters, as peft merges it.

    Args:
        layer: A peft LoRA layer wrapping an ``nn.Linear``.
        out: Optional flat buffer (at least the weight's size, the adapter's dtype) to compute into,
            so that repeated checks reuse memory instead of allocating a weight-sized tensor per layer;
            the result is then a view of it, valid until the buffer's next use.

    Returns:
        ``ΔW`` in the base weight's layout, bit for bit ``get_delta_weight`` (summed), or ``None`` when
        the layer has no active, unmerged adapter.
    """
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if not active or layer.disable_adapters or layer.merged:
        return None
    check_mergeable(layer)
    delta = _delta_into(layer, active[0], out)
    for adapter in active[1:]:
        delta += layer.get_delta_weight(adapter)  # in place: no second full-size temporary
    return delta


def lora_product(factors: Iterable[tuple[torch.Tensor, torch.Tensor, float]], out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``Σ scaling · B @ A`` over ``(A, B, scaling)`` factors, in peft's order and arithmetic for plain fp32
    factors (``get_delta_weight``'s ``(B @ A) * scaling``, summed): the first product into ``out`` (a flat
    buffer of at least its size) when given, each later one added in place.

    The one sum of a LoRA update: :func:`lora_delta` over a layer's active adapters, quantization-aware
    training over row chunks of ``B``, and the sharded survival check over a rank's rows of ``B``.
    """
    delta = None
    for a, b, scaling in factors:
        if delta is None:
            fits = (out is not None and out.dtype == a.dtype and out.device == a.device
                    and out.numel() >= b.shape[0] * a.shape[1])
            target = out[: b.shape[0] * a.shape[1]].view(b.shape[0], a.shape[1]) if fits else None
            delta = torch.mm(b, a, out=target).mul_(scaling)
        else:
            delta.add_(torch.mm(b, a).mul_(scaling))
    if delta is None:
        raise ValueError("`factors` is empty: a LoRA update needs at least one adapter's (A, B, scaling).")
    return delta


def _delta_into(layer: nn.Module, adapter: str, out: torch.Tensor | None) -> torch.Tensor:
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    plain = (
        a.dtype == b.dtype == torch.float32  # peft computes half-precision CPU merges in fp32 and casts back
        and a.device == b.device
        and not layer.fan_in_fan_out
    )
    if not plain:
        return layer.get_delta_weight(adapter)
    # get_delta_weight's `(B @ A) * scaling` with one weight-sized allocation instead of two, or none: into
    # the caller's buffer.
    return lora_product([(a, b, layer.scaling[adapter])], out)


@torch.no_grad()
def lora_deltas(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield ``(name, W0, ΔW)`` for every LoRA-adapted linear layer, one layer at a time.

    ``W0`` is the frozen base weight (not copied) and ``ΔW`` the sum of the active adapters'
    ``scaling · B @ A`` in the base weight's layout and the adapter's dtype (float32 by default), i.e.
    exactly what ``merge_and_unload`` adds to the base: the merged weight is ``(W0 + ΔW)`` rounded once
    to ``W0``'s dtype (:func:`lit_unlearn.deployment.merge`). Only one layer's ``ΔW`` exists at a time.

    Raises:
        ValueError: for a DoRA adapter, whose merge is not ``W0 + ΔW``.
    """
    for name, layer in lora_layers(model):
        check_mergeable(layer, deployed_name(name))
        delta = lora_delta(layer)
        if delta is None:
            continue
        yield deployed_name(name), layer.get_base_layer().weight, delta


def reference_mode(model: nn.Module) -> contextlib.AbstractContextManager:
    """Context in which ``model`` computes the reference policy π_ref (the model before unlearning).

    For a peft model this disables the adapter (the frozen base is π_ref); anything else is returned
    unchanged, so callers holding a separate frozen reference use that instead.
    """
    disable = getattr(model, "disable_adapter", None)
    if callable(disable) and is_peft_model(model):
        return disable()
    return contextlib.nullcontext()
