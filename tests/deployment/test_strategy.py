"""check_strategy: the one strategy policy of the callbacks that read deployed weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lit_unlearn.deployment import UnsupportedStrategyError, check_strategy
from lit_unlearn.deployment.strategy import DATA_PARALLEL_FIX
from lit_unlearn.strategies import FSDP2Strategy

DEEPSPEED = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # no deepspeed needed to name the class


@pytest.mark.parametrize("strategy", [None, SimpleNamespace(), DDPStrategy()], ids=["none", "single", "ddp"])
def test_whole_weights_are_served(strategy):
    assert check_strategy(strategy, "Callback", "reads whole weights") is True


@pytest.mark.parametrize("strategy", [FSDPStrategy(), DEEPSPEED, FSDP2Strategy()], ids=["fsdp", "deepspeed", "fsdp2"])
def test_sharding_is_refused_with_who_why_the_strategy_and_the_fix(strategy):
    name = type(strategy).__name__
    with pytest.raises(UnsupportedStrategyError) as error:
        check_strategy(strategy, "Callback", "reads whole weights")
    assert str(error.value) == f"Callback reads whole weights, but `strategy`={name} shards them. {DATA_PARALLEL_FIX}"


def test_fsdp2_is_served_when_allowed_and_only_fsdp2():
    assert check_strategy(FSDP2Strategy(), "Callback", "reads row shards", allow_fsdp2=True) is True
    assert isinstance(FSDP2Strategy(), ModelParallelStrategy)
    with pytest.raises(UnsupportedStrategyError, match=r"`strategy`=FSDPStrategy shards them"):
        check_strategy(FSDPStrategy(), "Callback", "reads row shards", allow_fsdp2=True)


def test_own_wording_and_warning_instead_of_raising():
    refusal = "{who} {why}, but {strategy} shards weights its own way. {fix}"
    with pytest.raises(UnsupportedStrategyError) as error:
        check_strategy(FSDPStrategy(), "Callback", "deploys weights", fix="Use ddp.", refusal=refusal)
    assert str(error.value) == "Callback deploys weights, but FSDPStrategy shards weights its own way. Use ddp."
    with pytest.warns(UserWarning, match=r"^Callback deploys weights, but FSDPStrategy shards weights its own way\. Off\.$"):
        served = check_strategy(FSDPStrategy(), "Callback", "deploys weights", fix="Off.", refusal=refusal, warn=True)
    assert served is False
    assert check_strategy(DDPStrategy(), "Callback", "deploys weights", warn=True) is True
