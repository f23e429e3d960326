"""``Deployment``: how a model is deployed — a precision (scheme), its block size and the quantized layers.

:meth:`Deployment.parse` is the one door every entry point parses a precision through (a Deployment, a
name, ``"name:block"``, or a ``{precision, block_size, modules}`` mapping), so a precision is validated
in one place and every bad one gets the same message. :func:`deployed_weights` runs a model as one
deployment would hold it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_unlearn.deployment.layers import DeployedLayer, Modules, deployed_layers
from lit_unlearn.deployment.model import deployed_model
from lit_unlearn.quantization import SCHEMES, Scheme, get_scheme
from lit_unlearn.sharding import is_sharded

__all__ = ["FULL", "PRECISIONS", "Deployment", "as_deployment", "as_deployments", "deployed_weights", "unsupported"]

#: The unquantized deployment's precision name.
FULL = "full"
# The precisions deployments use most, first (in every listing and error message): full, LLM.int8,
# bitsandbytes' 4-bit nf4/fp4, round-to-nearest int4; then every other scheme (int2…int7, rtn8, the -asym
# variants, bf16, fp16, the GGUF formats).
_COMMON = (FULL, "int8", "nf4", "fp4", "int4")
#: Every deployment precision: ``"full"`` and the scheme names of :data:`~lit_unlearn.quantization.SCHEMES`.
PRECISIONS: tuple[str, ...] = _COMMON + tuple(s for s in SCHEMES if s not in _COMMON)
_FIELDS = ("precision", "block_size", "modules")


def unsupported(what: str, value: Any, allowed: Sequence[str] = PRECISIONS, hint: str = "") -> ValueError:
    """The one message for a precision that is not one (or not one a backend runs, given its ``allowed``):
    the argument, the bad value, the allowed ones and, for lit-unlearn's own quantizer, the block form."""
    block_form = ", optionally with a block size after a colon ('int4:64')" if allowed is PRECISIONS else ""
    return ValueError(f"`{what}`={value!r} is not supported{hint}; choose one of {', '.join(map(repr, allowed))}{block_form}.")


@dataclass(frozen=True)
class Deployment:
    """A deployment: ``precision`` (``"full"`` or a scheme of :data:`~lit_unlearn.quantization.SCHEMES`),
    its ``block_size`` (``None``: the scheme's default) and the layers it quantizes (``modules``, see
    :data:`~lit_unlearn.deployment.Modules`; ``None``: every plain ``nn.Linear`` but the output head).

    ``QuantizationSurvival``, ``QuantizedEvaluation``, :func:`~lit_unlearn.evaluation.evaluate`,
    :func:`~lit_unlearn.deployment.deployed_weights`, :func:`~lit_unlearn.deployment.quantize_model_`,
    ``PreserveQuantization``, ``UnlearningModule(quantization_aware=...)`` and ``lit-unlearn export`` take
    one, or any form :meth:`parse` reads.

    Raises:
        ValueError: for an unknown precision or a block size the scheme does not allow (listing the valid
            values), at construction.
    """

    precision: str = "nf4"
    block_size: int | None = None
    modules: Modules = None

    def __post_init__(self) -> None:
        if self.precision == FULL:
            if self.block_size is not None:
                raise ValueError(f"`block_size`={self.block_size!r} means nothing at precision 'full'; drop it.")
            return
        if self.precision not in SCHEMES:
            raise unsupported("precision", self.precision)
        get_scheme(self.precision, self.block_size)

    @classmethod
    def parse(
        cls,
        value: Deployment | str | Mapping[str, Any],
        block_size: int | None = None,
        modules: Modules = None,
        *,
        what: str = "precision",
        refuse: Mapping[str, str] | None = None,
    ) -> Deployment:
        """The one door: a :class:`Deployment` from any form an entry point accepts.

        Args:
            value: A Deployment (then leave ``block_size`` and ``modules`` unset), a precision name
                (``"full"``, ``"nf4"``), a name with its block size (``"int4:64"``), or a mapping with the
                keys ``precision``, ``block_size``, ``modules`` (a YAML config's form).
            block_size: The block size of a name given without one.
            modules: The layer selection of a name or mapping without one.
            what: The argument's name in error messages (``"quantization_aware"``, ``"--quantize"``).
            refuse: Precisions this entry point cannot serve, each with the reason and the fix; refused
                before its block size is checked.

        Raises:
            ValueError: naming ``what``, the bad value and the allowed ones.
            TypeError: for a value of another type.

        Example::

            >>> Deployment.parse("int4:64")
            Deployment(precision='int4', block_size=64, modules=None)
            >>> Deployment.parse({"precision": "nf4", "block_size": 128}).block_size
            128
        """
        if isinstance(value, Deployment):
            if block_size is not None or modules is not None:
                raise ValueError(
                    f"Pass either a `Deployment` or `block_size`/`modules`, not both: the Deployment already "
                    f"says them ({value})."
                )
            if refuse and value.precision in refuse:
                raise ValueError(f"`{what}`={value}: {refuse[value.precision]}")
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(_FIELDS))
            if unknown or "precision" not in value:
                raise ValueError(
                    f"`{what}`={dict(value)!r} is not a deployment; give the keys {', '.join(map(repr, _FIELDS))} "
                    f"(precision required){f', not {unknown}' if unknown else ''}."
                )
            if isinstance(value["precision"], str) and ":" in value["precision"]:
                raise unsupported(what, value["precision"], hint=" (give the block size as `block_size`)")
            block_size = value.get("block_size", block_size)
            modules = value.get("modules", modules)
            value = value["precision"]
        if not isinstance(value, str):
            raise TypeError(f"`{what}`={value!r} is not a precision; give a name such as 'nf4' or a `Deployment`.")
        name, colon, block = value.partition(":")
        if colon:
            if not block.isdigit():
                raise ValueError(f"`{what}`={value!r}: the block size after ':' must be a positive integer.")
            if block_size is not None and block_size != int(block):
                raise ValueError(f"`{what}`={value!r} and `block_size`={block_size!r} disagree; give the block size once.")
            block_size = int(block)
        if name != FULL and name not in SCHEMES:
            raise unsupported(what, value)
        if refuse and name in refuse:
            raise ValueError(f"`{what}`={value!r}: {refuse[name]}")
        return cls(name, block_size, modules)

    @property
    def scheme(self) -> Scheme | None:
        """The quantization scheme, ``None`` at full precision."""
        return None if self.precision == FULL else get_scheme(self.precision, self.block_size)

    def layers(self, model: nn.Module) -> list[DeployedLayer]:
        """The model's deployed layers (:func:`~lit_unlearn.deployment.deployed_layers`) under this selection."""
        return deployed_layers(model, self.modules)

    @contextlib.contextmanager
    def weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` computing with this deployment's weights (see :func:`deployed_weights`)."""
        with deployed_weights(model, self) as deployed:
            yield deployed


def as_deployment(
    precision: str | Deployment,
    block_size: int | None = None,
    modules: Modules = None,
) -> Deployment:
    """A :class:`Deployment` from one, or from its three parts (the keyword form of every entry point)."""
    return Deployment.parse(precision, block_size, modules)


def as_deployments(
    items: str | Deployment | Sequence[str | Deployment],
    block_size: int | None = None,
    modules: Modules = None,
    *,
    what: str = "schemes",
    each: str = "precision",
    refuse: Mapping[str, str] | None = None,
) -> list[Deployment]:
    """One :class:`Deployment` per item: a name (with ``block_size`` and ``modules``) or a Deployment.

    The shared vocabulary of the callbacks' ``schemes``/``precisions`` arguments. Each name may appear
    once (its metrics are keyed by it), and a Deployment's ``modules`` must be those of the callback.
    ``each``: what error messages call one item; ``refuse``: precisions the caller cannot serve, each with the
    reason and the fix (:meth:`Deployment.parse`).

    Raises:
        ValueError: for an empty list, an unknown name, a refused or repeated one, or a Deployment that
            selects other layers than ``modules``.
    """
    listed = [items] if isinstance(items, (str, Deployment)) else list(items)
    allowed = [p for p in PRECISIONS if not refuse or p not in refuse]
    if not listed:
        raise ValueError(f"`{what}` is empty; name at least one of {', '.join(map(repr, allowed))}.")
    out = []
    for item in listed:
        if isinstance(item, Deployment):
            if refuse and item.precision in refuse:
                raise ValueError(f"`{what}` holds {item}: {refuse[item.precision]}")
            if item.modules is not None and item.modules != modules:
                raise ValueError(
                    f"`{what}` holds {item}, which selects other layers than `modules`={modules!r}; one "
                    "callback quantizes one set of layers. Leave the Deployment's `modules` unset."
                )
            out.append(Deployment(item.precision, item.block_size, modules))
        elif isinstance(item, str):
            out.append(Deployment.parse(item, None if item == FULL else block_size, modules, what=each, refuse=refuse))
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
        precision: ``"full"``, a scheme name (``"int4:64"`` with its block size), or a :class:`Deployment`.
        block_size: Quantization block (group) size; ``None`` takes the scheme's default.
        filter_fn: The layers to quantize: ``(deployed_name, module) -> bool`` or any
            :data:`Modules` selection; names are those of the merged model. ``None``: every linear layer
            except the output head, as bitsandbytes does.

    Raises:
        ValueError: for an unknown ``precision``, a LoRA layer merged in place, or a DoRA adapter.
    """
    deployment = Deployment.parse(precision, block_size, filter_fn)
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


def check_modules(modules: object) -> None:
    """Raise, naming the value and the forms it may take, unless ``modules`` is a :data:`Modules` selection."""
    fix = (
        "Pass a regex searched in each layer name, a list of layer names, a `filter_fn(name, module)`, or None "
        "for every linear layer but the output head."
    )
    if modules is None or callable(modules):
        return
    if isinstance(modules, str):
        try:
            re.compile(modules)
        except re.error as err:
            raise ValueError(
                f"`modules`={modules!r} is not a valid regular expression ({err}). {fix}"
            ) from None
        return
    if (
        not isinstance(modules, Sequence)
        or not modules
        or not all(isinstance(m, str) and m for m in modules)
    ):
        raise ValueError(f"`modules`={modules!r} is not a layer selection. {fix}")
