"""The functional half of the survival check: probe batches, their mean loss, and side-effect-free runs.

A probe run must leave training exactly as it found it: eval mode for the duration (then every module's
own ``training`` flag back), no autograd, the global RNG streams forked and restored, and every swapped
weight's original storage put back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_unlearn._modes import eval_mode

__all__ = ["ProbeLoss", "forked_rng", "isolated_eval", "mean_losses", "split_probe"]

#: The probe loss: one split of a probe batch (on the model's device) to a scalar loss tensor.
ProbeLoss = Callable[[Any], torch.Tensor]


def split_probe(batch: Any) -> dict[str, Any]:
    """``{"forget": …, "retain": …}`` of a CombinedLoader dict batch; a plain batch counts as forget data."""
    if isinstance(batch, Mapping) and "forget" in batch:
        return {split: batch[split] for split in ("forget", "retain") if batch.get(split) is not None}
    return {"forget": batch}


@contextlib.contextmanager
def isolated_eval(module: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd and a forked RNG; each submodule's ``training`` flag is restored afterwards.

    Forking the RNG is belt and braces: in eval mode dropout draws nothing, but a model may sample in its
    forward regardless, and training with probes between its steps must stay bit-identical to training
    without them.
    """
    with forked_rng(), eval_mode(module):
        yield


def forked_rng() -> contextlib.AbstractContextManager:
    """The global RNG streams (CPU, and the current CUDA device once CUDA is in use) forked and restored."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [])


def mean_losses(loss_fn: ProbeLoss, probe: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean probe loss per split (``forget``, and ``retain`` when the probe has it)."""
    totals: dict[str, list[float]] = {}
    for batch in probe:
        for split, data in batch.items():
            totals.setdefault(split, []).append(float(loss_fn(data)))
    return {split: sum(values) / len(values) for split, values in totals.items()}
