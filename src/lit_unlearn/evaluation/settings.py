"""What a MUSE evaluation measures and how: the data, the deployments and every setting that changes a number.

:class:`EvaluationSettings` checks its arguments once (an unknown name or an out-of-range value fails before
any model loads) and is then fixed; :class:`Evaluator` evaluates models under one of them with the data
loaded once. Neither needs a Trainer: ``QuantizedEvaluation`` holds one of each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lit_unlearn.deployment import Deployment, as_deployments
from lit_unlearn.evaluation.cache import data_fingerprint
from lit_unlearn.evaluation.data import EvalData
from lit_unlearn.evaluation.deployment import Precision, Quantizer, check_precision
from lit_unlearn.evaluation.protocol import Task, check_tasks, evaluate
from lit_unlearn.metrics import ConventionName, get_convention

__all__ = ["EvaluationSettings", "Evaluator", "check_positive_int"]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value: Any, optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive integer (or ``None``, if ``optional``)."""
    if optional:
        if value is not None and not _positive_int(value):
            raise ValueError(f"`{name}`={value!r} must be a positive integer, or None to turn it off.")
    elif not _positive_int(value):
        raise ValueError(f"`{name}`={value!r} must be a positive integer.")


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything a MUSE evaluation's numbers depend on, checked; build one with :meth:`of`.

    Attributes:
        data: The MUSE-layout dataset (a hub id, a local directory, or ``world:data``).
        deployments: One :class:`~lit_unlearn.deployment.Deployment` per precision, in order, no repeats.
        convention: The convention's name (``muse`` or ``open-unlearning``).
        quantizer: ``fake`` or ``bitsandbytes``.
        tasks: The tasks run, checked by :func:`~lit_unlearn.evaluation.check_tasks`.
        max_items: Items per evaluated set; ``None`` keeps all.
        batch_size: Prompts or texts per forward pass.
        block_size: The block size every quantized precision was given (``None``: each scheme's default).
        modules: The quantized linear layers as given (``None``: every linear layer but the output head).
        verbmem_max_new_tokens: Greedy tokens per VerbMem prompt.
        knowmem_max_new_tokens: Greedy tokens per KnowMem question.
        progress: Show progress bars over evaluation items.
    """

    data: str
    deployments: tuple[Deployment, ...]
    convention: str
    quantizer: Quantizer
    tasks: tuple[str, ...]
    max_items: int | None
    batch_size: int
    block_size: int | None
    modules: str | Sequence[str] | None
    verbmem_max_new_tokens: int
    knowmem_max_new_tokens: int
    progress: bool

    @classmethod
    def of(
        cls,
        data: str = "world:data",
        precisions: Sequence[Precision | Deployment] = ("full", "int8", "nf4", "fp4"),
        convention: ConventionName = "muse",
        max_items: int | None = None,
        batch_size: int = 8,
        quantizer: Quantizer = "fake",
        block_size: int | None = None,
        modules: str | Sequence[str] | None = None,
        tasks: Sequence[Task] | None = None,
        verbmem_max_new_tokens: int = 128,
        knowmem_max_new_tokens: int = 32,
        progress: bool = True,
    ) -> EvaluationSettings:
        """Check the arguments (as ``QuantizedEvaluation`` documents them) and fix them.

        Raises:
            ValueError: If an argument is out of range or unknown; the message names it and the valid values.
        """
        if not isinstance(data, str) or not data:
            raise ValueError(
                f"`data`={data!r} must name a MUSE-layout dataset, e.g. 'world:data' or "
                "'muse-bench/MUSE-News'."
            )
        if isinstance(precisions, (str, Deployment)):
            precisions = [precisions]
        # One Deployment per precision, each parsed once (an unknown name or a block size a scheme refuses
        # fails here, before any model loads), then checked against what the quantizer runs.
        deployments = as_deployments(list(dict.fromkeys(precisions)), block_size, modules, what="precisions")
        for deployment in deployments:
            check_precision(deployment, quantizer)
        custom = any(d.block_size is not None for d in deployments)
        if quantizer == "bitsandbytes" and (block_size is not None or modules is not None or custom):
            raise ValueError(
                "`block_size` and `modules` choose what the fake quantizer deploys; quantizer='bitsandbytes' "
                "reloads the model with transformers' fixed choice (block 64, every linear layer but the "
                "head). Drop them, or use quantizer='fake'."
            )
        check_positive_int("max_items", max_items, optional=True)
        for name, value in (
            ("batch_size", batch_size),
            ("verbmem_max_new_tokens", verbmem_max_new_tokens),
            ("knowmem_max_new_tokens", knowmem_max_new_tokens),
        ):
            check_positive_int(name, value)
        return cls(
            data=data,
            deployments=tuple(deployments),
            convention=get_convention(convention).name,
            quantizer=quantizer,
            tasks=check_tasks(tasks),
            max_items=max_items,
            batch_size=batch_size,
            block_size=block_size,
            modules=modules,
            verbmem_max_new_tokens=verbmem_max_new_tokens,
            knowmem_max_new_tokens=knowmem_max_new_tokens,
            progress=progress,
        )

    @property
    def precisions(self) -> list[str]:
        """The precisions' names, in order."""
        return [d.precision for d in self.deployments]

    def deployment(self, precision: str) -> Deployment | None:
        """The deployment of ``precision``, or ``None`` if it is not evaluated."""
        return next((d for d in self.deployments if d.precision == precision), None)

    def cache_parts(
        self, precision: str, auc_retrain: float | None, data_hash: str, tasks: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Everything a row at ``precision`` depends on but the model, for a results-cache key
        (:meth:`~lit_unlearn.evaluation.cache.ResultsCache.key`); ``data_hash`` fingerprints the data."""
        deployment = self.deployment(precision)
        modules = None if deployment is None else deployment.modules
        return {
            "precision": precision,
            "block_size": None if deployment is None else deployment.block_size,
            "modules": modules if not callable(modules) else getattr(modules, "__qualname__", repr(modules)),
            # The convention's every detail, so a change of what a convention computes invalidates its rows.
            "quantizer": self.quantizer, "convention": dataclasses.asdict(get_convention(self.convention)),
            "auc_retrain": auc_retrain,
            "tasks": list(tasks or self.tasks), "batch_size": self.batch_size,
            "verbmem_max_new_tokens": self.verbmem_max_new_tokens,
            "knowmem_max_new_tokens": self.knowmem_max_new_tokens,
            "data": data_hash,
        }


class Evaluator:
    """Evaluate models under one :class:`EvaluationSettings`; the data is loaded (and fingerprinted) once,
    on first use.

    Args:
        settings: What to evaluate and how.
    """

    def __init__(self, settings: EvaluationSettings) -> None:
        self.settings = settings
        self._data: EvalData | None = None
        self._data_hash: str | None = None

    def data(self) -> EvalData:
        """The evaluation data, ``max_items`` per set."""
        if self._data is None:
            self._data = EvalData.load(self.settings.data, self.settings.max_items)
        return self._data

    def data_fingerprint(self) -> str:
        """SHA-256 of the data's items (:func:`~lit_unlearn.evaluation.cache.data_fingerprint`)."""
        if self._data_hash is None:
            self._data_hash = data_fingerprint(self.data())
        return self._data_hash

    def cache_parts(
        self, precision: str, auc_retrain: float | None, tasks: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """:meth:`EvaluationSettings.cache_parts` with this data's fingerprint."""
        return self.settings.cache_parts(precision, auc_retrain, self.data_fingerprint(), tasks)

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: Any,
        precision: str,
        auc_retrain: float | None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """``model``'s results as deployed at ``precision`` (:func:`~lit_unlearn.evaluation.evaluate`);
        ``tasks`` overrides the settings' tasks."""
        settings = self.settings
        # The fake quantizer deploys with this precision's block size and layers; bitsandbytes has its own.
        deployment = settings.deployment(precision) if settings.quantizer == "fake" else precision
        return evaluate(
            model,
            tokenizer,
            self.data(),
            precision=deployment,
            convention=settings.convention,
            auc_retrain=auc_retrain,
            tasks=tasks or settings.tasks,
            batch_size=settings.batch_size,
            quantizer=settings.quantizer,
            verbmem_max_new_tokens=settings.verbmem_max_new_tokens,
            knowmem_max_new_tokens=settings.knowmem_max_new_tokens,
            progress=settings.progress,
        )
