"""The Lightning side of the survival check's functional half: the module's and DataModule's probe hooks,
and probe batches moved between host and device.

The probe itself (batches split into forget and retain, their mean loss, runs in eval mode with a forked
RNG) is :mod:`lit_unlearn.survival.probe`'s; its names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from lit_unlearn.survival.probe import ProbeLoss, forked_rng, isolated_eval, split_probe

__all__ = [
    "HELDOUT_HOOK", "PROBE_HOOK", "ProbeLoss", "heldout_probe", "isolated_eval", "resolve_probe_loss",
    "split_probe", "to_device",
]

PROBE_HOOK = "quantization_probe_loss"
HELDOUT_HOOK = "quantization_probe_batches"


def heldout_probe(pl_module: Any, datamodule: Any) -> list[dict[str, Any]] | None:
    """The held-out probe: ``quantization_probe_batches()`` of the module, else of the DataModule, split and on
    the host; ``None`` when neither defines the hook or both return ``None``.

    Each batch has the form of a training batch (:func:`split_probe`). The hook is asked again on every fit
    (resume included), so it must return the same batches each time: a fixed set in a fixed order.

    Raises:
        TypeError: If the hook returns something other than a list or tuple of batches.
        ValueError: If it returns an empty list.
    """
    for owner in (pl_module, datamodule):
        hook = getattr(owner, HELDOUT_HOOK, None)
        if not callable(hook):
            continue
        # A DataLoader draws its base seed from the global RNG; training must not see that draw.
        with forked_rng():
            batches = hook()
        if batches is None:
            continue
        where = f"`{type(owner).__name__}.{HELDOUT_HOOK}()`"
        if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes, Mapping)):
            raise TypeError(
                f"{where} returned a {type(batches).__name__}; return a list of batches, each a training batch "
                "(`{\"forget\": ..., \"retain\": ...}` or a plain forget batch), e.g. `list(loader)`, or None for "
                "no held-out probe."
            )
        if not batches:
            raise ValueError(
                f"{where} returned an empty list; return at least one batch, or None for no held-out probe."
            )
        return [to_device(split_probe(batch), "cpu") for batch in batches]
    return None


def to_device(batch: Any, device: torch.device | str) -> Any:
    """A copy of ``batch`` with every tensor detached and moved (copied even when already there)."""
    return apply_to_collection(batch, torch.Tensor, lambda t: t.detach().to(device, copy=True))


def resolve_probe_loss(pl_module: nn.Module, model: nn.Module, batch: Any) -> ProbeLoss | None:
    """The probe loss of ``pl_module``, or ``None`` (after one info line) if it has none.

    In order: the module's ``quantization_probe_loss(batch) -> Tensor`` hook; else ``model(**batch).loss``
    when ``model`` accepts the batch as keyword arguments and returns an object with a ``loss`` (Hugging
    Face causal LMs given ``labels``). ``batch`` is one split of the probe, on the model's device, and the
    call runs inside :func:`isolated_eval`.
    """
    hook = getattr(pl_module, PROBE_HOOK, None)
    if callable(hook):
        return hook

    def model_loss(probe: Any) -> torch.Tensor:
        return model(**probe).loss

    reason = None
    if not isinstance(batch, Mapping):
        reason = f"the batch is a {type(batch).__name__}, not a mapping of model inputs"
    else:
        try:
            loss = getattr(model(**batch), "loss", None)
        except TypeError as err:
            loss, reason = None, f"`{type(model).__name__}(**batch)` failed: {err}"
        if reason is None and not isinstance(loss, torch.Tensor):
            reason = f"`{type(model).__name__}(**batch)` returns no `.loss` (give the batch `labels`)"
    if reason is None:
        return model_loss
    rank_zero_info(
        f"QuantizationSurvival: skipping the functional check because {type(pl_module).__name__} defines no "
        f"`{PROBE_HOOK}(batch) -> Tensor` and {reason}. Define that hook to enable it."
    )
    return None
