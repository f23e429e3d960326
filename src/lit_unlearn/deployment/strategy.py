"""Which Lightning strategies the deployed-weight callbacks can serve: those that keep whole weights."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = ["DATA_PARALLEL_FIX", "SHARDING_STRATEGIES", "UnsupportedStrategyError", "check_strategy", "shards_weights"]

#: Strategies that shard weights across processes: a deployed layer is then not whole on any rank.
SHARDING_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class UnsupportedStrategyError(MisconfigurationException, ValueError):
    """A callback that reads whole deployed weights was run under a strategy that shards them."""


def shards_weights(strategy: Any) -> bool:
    return isinstance(strategy, SHARDING_STRATEGIES)


#: What the callbacks that read whole weights can run under instead.
DATA_PARALLEL_FIX = "Use a single device or a data-parallel strategy ('ddp', 'ddp_spawn', 'ddp_notebook')."


def check_strategy(strategy: Any, who: str, why: str, fix: str = DATA_PARALLEL_FIX) -> None:
    """Raise :class:`UnsupportedStrategyError` naming ``who``, the strategy, ``why`` and the ``fix``."""
    if shards_weights(strategy):
        raise UnsupportedStrategyError(
            f"{who} {why}, but `strategy`={type(strategy).__name__} shards them. {fix}"
        )
