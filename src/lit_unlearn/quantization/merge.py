"""The merge ``W0 + ΔW`` as peft's ``merge_and_unload`` stores it, in one function.

peft adds the (float32) update to the base weight in place, ``weight += delta``: the sum is taken in the
promoted dtype and rounded once to the base's dtype. A bf16 base therefore stays bf16, and an update below
half a bf16 ulp of its weight vanishes here, before any quantizer sees it. Everything lit-unlearn measures
about a merged weight — the deployed layer (:class:`lit_unlearn.deployment.DeployedLayer`), the streamed
survival statistics — forms it with :func:`merge`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["merge"]


def merge(w0: Tensor, delta: Tensor, out: Tensor | None = None) -> Tensor:
    """``W0 + ΔW`` rounded once to ``W0``'s dtype (into ``out``, of that dtype, when given)."""
    if out is not None:
        return torch.add(w0, delta, out=out)
    return torch.add(w0, delta).to(w0.dtype)
