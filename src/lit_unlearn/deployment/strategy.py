"""Which Lightning strategies the deployed-weight callbacks can serve: those that keep whole weights."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = [
    "DATA_PARALLEL_FIX",
    "FSDP2_FIX",
    "REFUSAL",
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


#: The message of a refused strategy: ``who`` and ``why``, the strategy's class name, the ``fix``.
REFUSAL = "{who} {why}, but `strategy`={strategy} shards them. {fix}"


def check_strategy(
    strategy: Any,
    who: str,
    why: str,
    fix: str = DATA_PARALLEL_FIX,
    allow_fsdp2: bool = False,
    *,
    refusal: str = REFUSAL,
    warn: bool = False,
) -> bool:
    """Raise :class:`UnsupportedStrategyError` naming ``who``, the strategy, ``why`` and the ``fix``.

    A single device and the data-parallel strategies (every rank holding whole weights) are served;
    those of :data:`SHARDING_STRATEGIES` are not, except ``ModelParallelStrategy`` with ``allow_fsdp2``.

    Args:
        allow_fsdp2: ``ModelParallelStrategy`` is served (the callback measures FSDP2 row shards, or
            deploys each weight while its block runs).
        refusal: The message, a format string of ``who``, ``why``, ``strategy`` (its class name) and ``fix``.
        warn: For a callback that can step aside for the run: warn (on rank zero) with the message and
            return ``False`` instead of raising.

    Returns:
        Whether ``strategy`` is served.
    """
    if allow_fsdp2 and isinstance(strategy, ModelParallelStrategy):
        return True
    if not shards_weights(strategy):
        return True
    message = refusal.format(who=who, why=why, strategy=type(strategy).__name__, fix=fix)
    if not warn:
        raise UnsupportedStrategyError(message)
    rank_zero_warn(message)
    return False
