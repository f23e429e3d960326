"""``Deployment``: how a model is deployed — a precision (scheme), its block size and the quantized layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from lit_unlearn.deployment.layers import DeployedLayer, Modules, deployed_layers
from lit_unlearn.quantization import SCHEMES, Scheme, get_scheme

__all__ = ["FULL", "Deployment"]

#: The unquantized deployment's precision name.
FULL = "full"


@dataclass(frozen=True)
class Deployment:
    """A deployment: ``precision`` (``"full"`` or a scheme of :data:`~lit_unlearn.quantization.SCHEMES`),
    its ``block_size`` (``None``: the scheme's default) and the layers it quantizes (``modules``, see
    :data:`~lit_unlearn.deployment.Modules`; ``None``: every plain ``nn.Linear`` but the output head).

    ``QuantizationSurvival``, ``QuantizedEvaluation``, :func:`~lit_unlearn.evaluation.evaluate`,
    :func:`~lit_unlearn.deployment.deployed_weights` and :func:`~lit_unlearn.quantization.quantize_model_`
    take one (or its three parts under the same names).

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
            choices = ", ".join(map(repr, (FULL, *SCHEMES)))
            raise ValueError(f"`precision`={self.precision!r} is not a deployment precision; choose one of {choices}.")
        get_scheme(self.precision, self.block_size)

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
        from lit_unlearn.deployment import deployed_weights

        with deployed_weights(model, self) as deployed:
            yield deployed
