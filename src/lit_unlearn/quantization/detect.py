"""Which quantization grid a model's weights already sit on: :func:`on_grid` and :func:`detect_format`.

A model loaded from a GGUF or bitsandbytes checkpoint and cast to float holds weights that are exactly
decoded values of that format: SmolLM2-135M-Instruct from its Q4_1 file has every decoder weight on the
Q4_1 grid. Re-quantizing such a model to its own format is the worst case for unlearning: each weight sits
on a grid point, so an update under half a step rounds straight back (see PAPER.md, "What a real model
showed"). Detecting it lets the survival check watch that format.

Example::

    >>> import torch
    >>> from lit_unlearn.quantization import fake_quantize
    >>> w = fake_quantize(torch.randn(8, 64), "q4_1")
    >>> on_grid(w, "q4_1"), on_grid(w, "q4_0")
    (True, False)
    >>> detect_format([w])
    'q4_1'
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lit_unlearn.quantization.fit import fit_scheme
from lit_unlearn.quantization.functional import fake_quantize
from lit_unlearn.quantization.schemes import Scheme, get_scheme

__all__ = ["DETECTED_FORMATS", "detect_format", "on_grid"]

#: The candidates of :func:`detect_format`, cheapest first: bitsandbytes' 4-bit formats at their
#: transformers block (64), ggml's legacy block formats, then the K-quants (a least-squares search per
#: sub-block, several times slower).
DETECTED_FORMATS: tuple[str, ...] = ("nf4", "fp4", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")


@torch.no_grad()
def on_grid(weight: Tensor, scheme: str | Scheme) -> bool:
    """Whether ``weight`` is exactly its own fake quantization under ``scheme`` (``W == Q(W)``, bit for
    bit in ``weight``'s dtype): the values a deployment of that format decodes to.

    The scheme is fitted to the weight's shape first (a K-quant on 576-wide rows is checked as its fallback
    Q5_0, :func:`~lit_unlearn.quantization.fit_scheme`). A GGUF format whose blocks do not fit the rows at
    all (llama.cpp stores those as F16) says nothing about that format: ``False``.
    """
    scheme = get_scheme(scheme)
    fitted = fit_scheme(scheme, weight.shape)
    if scheme.family in ("gguf", "gguf_mixture") and fitted.family == "half":
        return False
    return bool(torch.equal(fake_quantize(weight, fitted), weight))


def detect_format(weights: Iterable[Tensor]) -> str | None:
    """The first format of :data:`DETECTED_FORMATS` on whose grid every weight sits, or ``None``.

    Each candidate stops at the first weight off its grid, so a model on no grid costs about one
    quantization of its first weight per candidate.

    Args:
        weights: The weights to test (``W0`` of each watched layer); at least one.
    """
    weights = list(weights)
    if not weights:
        return None
    for name in DETECTED_FORMATS:
        if all(on_grid(w, name) for w in weights):
            return name
    return None
