"""Which Lightning strategies the deployed-weight callbacks can serve: those that keep whole weights."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = [
    "DATA_PARALLEL_FIX",
    "FSDP2_FIX",
    "SHARDING_STRATEGIES",
    "UnsupportedStrategyError",
    "check_strategy",
    "shards_weights",
]

#: Strategies that shard weights across processes: a deployed layer is then not whole on any rank.
SHARDING_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class UnsupportedStrategyError(MisconfigurationException, ValueError):
    """A callback that reads whole deployed weights was run under a strategy that shards them."""


def shards_weights(strategy: Any) -> bool:
    return isinstance(strategy, SHARDING_STRATEGIES)


#: What the callbacks that read whole weights can run under instead.
DATA_PARALLEL_FIX = "Use a single device or a data-parallel strategy ('ddp', 'ddp_spawn', 'ddp_notebook')."


#: What the callbacks that measure sharded weights layer by layer can run under.
FSDP2_FIX = (
    "Use `ModelParallelStrategy` (FSDP2, which UnlearningModule shards per decoder block), a single device or a "
    "data-parallel strategy ('ddp', 'ddp_spawn', 'ddp_notebook')."
)


def check_strategy(
    strategy: Any, who: str, why: str, fix: str = DATA_PARALLEL_FIX, allow_fsdp2: bool = False
) -> None:
    """Raise :class:`UnsupportedStrategyError` naming ``who``, the strategy, ``why`` and the ``fix``.

    ``allow_fsdp2``: ``ModelParallelStrategy`` is served (the callback measures FSDP2 row shards).
    """
    if allow_fsdp2 and isinstance(strategy, ModelParallelStrategy):
        return
    if shards_weights(strategy):
        raise UnsupportedStrategyError(
            f"{who} {why}, but `strategy`={type(strategy).__name__} shards them. {fix}"
        )
