"""Train/eval mode switches that put every submodule's own flag back afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients; each submodule's ``training`` flag is restored on exit.

    Restoring flag by flag, not with ``model.train()``, keeps submodules that were deliberately in eval
    mode (a frozen reference, a user's batch norm) as they were.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        with torch.no_grad():
            model.eval()
            yield model
    finally:
        for module, training in modes:
            module.training = training
