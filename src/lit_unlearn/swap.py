"""Swap weights into a model for a measurement and put the originals back exactly.

The shape of Lightning's ``WeightAveraging``: swap in, measure, swap back. Parameters keep their
identity (optimizer state and hooks stay attached); only ``param.data`` changes, and the original
storage is restored, so training afterwards is bit-identical to a run without the measurement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["lazily_swapped_weights", "swapped_weights"]


@contextlib.contextmanager
@torch.no_grad()
def swapped_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily replace parameters of ``model`` by ``weights`` (name → tensor of the same shape).

    Names are those of ``model.named_parameters()``. The originals are restored on exit, also when the
    body raises.

    Raises:
        KeyError: if a name is not a parameter of ``model``; the message shows a few valid names.
        ValueError: if a replacement has a different shape.
    """
    params = dict(model.named_parameters())
    originals: dict[str, torch.Tensor] = {}
    try:
        for name, value in weights.items():
            if name not in params:
                raise KeyError(f"{name!r} is not a parameter of {type(model).__name__}; e.g. {list(params)[:3]}.")
            param = params[name]
            if value.shape != param.shape:
                raise ValueError(f"Cannot swap {name!r}: shape {tuple(value.shape)} != {tuple(param.shape)}.")
            originals[name] = param.data
            param.data = value.to(device=param.device, dtype=param.dtype)
        yield model
    finally:
        for name, original in originals.items():
            params[name].data = original


@contextlib.contextmanager
@torch.no_grad()
def lazily_swapped_weights(
    model: nn.Module, make: Callable[[str, torch.Tensor], torch.Tensor | None]
) -> Iterator[nn.Module]:
    """Like ``swapped_weights`` but computes each replacement from the current tensor, one at a time.

    ``make(name, current)`` returns the replacement or ``None`` to keep the parameter. Peak extra memory
    is the replaced tensors themselves; nothing else of the model is copied.
    """
    originals: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
    try:
        for name, param in model.named_parameters():
            value = make(name, param.data)
            if value is None:
                continue
            originals[name] = (param, param.data)
            param.data = value.to(device=param.device, dtype=param.dtype)
        yield model
    finally:
        for param, original in originals.values():
            param.data = original
