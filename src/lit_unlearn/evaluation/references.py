"""Reference rows: the scores of models that do not change (``target``, ``retrain``) at every precision.

:class:`ReferenceRows` evaluates each reference model once per precision under an
:class:`~lit_unlearn.evaluation.settings.Evaluator`'s settings, and AUC_retrain once from a reference named
``retrain``. Rows are kept in memory (and in a checkpoint, through :meth:`ReferenceRows.state_dict`) and,
with a :class:`~lit_unlearn.evaluation.cache.ResultsCache`, on disk across runs, keyed by the reference's
file contents, the precision, the data and every evaluation setting. It needs no Trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_unlearn.evaluation.cache import ResultsCache
from lit_unlearn.evaluation.deployment import base_dtype
from lit_unlearn.evaluation.settings import Evaluator
from lit_unlearn.sharding import is_sharded, shard_model

__all__ = ["RETRAIN", "ReferenceRows", "Rows", "check_references", "load_reference"]

#: Name of the reference whose full-precision AUC is AUC_retrain and whose KnowMem is the stopping target.
RETRAIN = "retrain"

#: One model's results per precision: ``{precision: {metric: value}}``.
Rows = dict[str, dict[str, float]]


def check_references(references: Mapping[str, str] | None) -> dict[str, str]:
    """``references`` as a plain ``{row name: model path or hub id}``.

    Raises:
        ValueError: If an entry has no name or no path.
    """
    references = dict(references or {})
    for name, path in references.items():
        if not name or not isinstance(path, str) or not path:
            raise ValueError(
                f"`references` entry {name!r}: {path!r} must map a row name to a model path or hub id, "
                "e.g. {'retrain': 'world:retrain'}."
            )
    return references


def load_reference(path: str, model: nn.Module) -> nn.Module:
    """Load reference ``path`` (a directory, hub id or ``.gguf`` file) in ``model``'s dtype, on its device,
    in eval mode; sharded like ``model`` when it is sharded (FSDP2, the same mesh)."""
    from lit_unlearn.data.sources import resolve_path
    from lit_unlearn.gguf_io import load_causal_lm

    like = next(model.parameters())
    dtype = base_dtype(model)
    rank_zero_info(f"Loading reference model {path!r} for the MUSE table.")
    reference = load_causal_lm(resolve_path(path), dtype=dtype)  # a directory, hub id or .gguf file
    if is_sharded(like):
        # Sharded like the trained model (FSDP2, the same mesh): no rank holds a whole reference.
        return shard_model(reference.to(like.device), like.device_mesh, reshard_after_forward=True).eval()
    return reference.to(like.device).eval()


class ReferenceRows:
    """The rows of reference models, evaluated once per precision, and AUC_retrain.

    Args:
        evaluator: Evaluates the references (its settings are part of every cache key).
        references: Row name → model path or hub id, e.g. ``{"retrain": "world:retrain"}``.
        auc_retrain: A fixed AUC_retrain (overrides the one from a ``retrain`` reference), or ``None``.
        cache: Where rows of earlier runs are reused from and written to; ``None`` keeps them in memory only.

    Attributes:
        rows: ``{reference name: {precision: results}}`` evaluated or read so far.
        computed_auc_retrain: AUC_retrain from the ``retrain`` reference, once computed (or read).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        references: Mapping[str, str],
        auc_retrain: float | None = None,
        cache: ResultsCache | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.references = dict(references)
        self.auc_retrain = auc_retrain
        self.cache = cache
        self.rows: dict[str, Rows] = {}
        self.computed_auc_retrain: float | None = None

    def resolve_auc_retrain(self, model: nn.Module, tokenizer: Any) -> float | None:
        """The AUC_retrain for PrivLeak: the fixed one, else the full-precision AUC of the ``retrain``
        reference (evaluated once; ``model`` tells where and in which dtype it is loaded), else ``None``."""
        tasks = self.evaluator.settings.tasks
        if self.auc_retrain is not None or "privleak" not in tasks or RETRAIN not in self.references:
            return self.auc_retrain
        if self.computed_auc_retrain is None:
            key = self.cache_key(self.references[RETRAIN], "full", 1.0, tasks=["privleak"])
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                auc = cached["auc"]
            else:
                reference = load_reference(self.references[RETRAIN], model)
                try:
                    # Only the attack's AUC is read here; it does not depend on the reference AUC: any serves.
                    results = self.evaluator.evaluate(
                        reference, tokenizer, "full", auc_retrain=1.0, tasks=["privleak"]
                    )
                finally:
                    del reference
                    _empty_cache()
                auc = results["auc"]
                if self.cache is not None and _is_rank_zero():
                    self.cache.put(key, results, {"model": self.references[RETRAIN], "what": "AUC_retrain"})
            self.computed_auc_retrain = auc
            rank_zero_info(
                f"AUC_retrain = {auc:.4f} (Min-40% forget vs holdout, retrain model at full precision)."
            )
        return self.computed_auc_retrain

    def evaluate(self, name: str, model: nn.Module, tokenizer: Any, auc_retrain: float | None) -> Rows:
        """The rows of reference ``name`` at every precision: kept ones, cached ones, and the rest evaluated
        (the reference loaded once, like ``model``) and written to the cache."""
        path = self.references[name]
        precisions = self.evaluator.settings.precisions
        rows = self.rows.setdefault(name, {})
        keys = {p: self.cache_key(path, p, auc_retrain) for p in precisions if p not in rows}
        for precision, key in keys.items():
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                rows[precision] = cached
        missing = [p for p in precisions if p not in rows]
        if missing:
            reference = load_reference(path, model)
            try:
                for precision in missing:
                    rows[precision] = self.evaluator.evaluate(reference, tokenizer, precision, auc_retrain)
                    if self.cache is not None and _is_rank_zero():
                        about = {"model": path, "precision": precision}
                        self.cache.put(keys[precision], rows[precision], about)
            finally:
                del reference
                _empty_cache()
        elif keys:
            rank_zero_info(
                f"Reference {name!r}: {len(keys)} rows from the results cache ({self.cache.directory})."
            )
        return rows

    def cache_key(
        self, path: str, precision: str, auc_retrain: float | None, tasks: Sequence[str] | None = None
    ) -> str | None:
        """The results-cache key of reference ``path`` at ``precision`` under the evaluator's settings."""
        if self.cache is None:
            return None
        from lit_unlearn.data.sources import resolve_path

        parts = self.evaluator.cache_parts(precision, auc_retrain, tasks)
        return self.cache.key(resolve_path(path), parts)

    def state_dict(self) -> dict[str, Any]:
        """The rows and computed AUC_retrain, so a resumed run need not evaluate the references again."""
        return {"reference_rows": self.rows, "computed_auc_retrain": self.computed_auc_retrain}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.rows = dict(state_dict.get("reference_rows", {}))
        self.computed_auc_retrain = state_dict.get("computed_auc_retrain")


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _empty_cache() -> None:
    # A reference model can be as large as the trained one; give its accelerator memory back at once.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
