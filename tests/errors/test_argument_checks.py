"""The argument checks added with the deployment package, PreserveQuantization and the results cache fire."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import FSDPStrategy

from lit_unlearn import UnlearningModule
from lit_unlearn.callbacks import PreserveQuantization, QuantizedEvaluation
from lit_unlearn.deployment import Deployment, UnsupportedStrategyError, as_deployments
from lit_unlearn.quantization import get_scheme


def test_deployments_of_something_else_are_a_type_error():
    with pytest.raises(TypeError, match=r"holds 4; give scheme names or `Deployment`s"):
        as_deployments(["nf4", 4])
    with pytest.raises(ValueError, match=r"`schemes` is empty"):
        as_deployments([])


def test_half_precision_schemes_take_no_block_size():
    with pytest.raises(ValueError, match=r"`block_size`=64 does not apply to 'bf16'"):
        get_scheme("bf16", 64)


def test_flags_must_be_booleans():
    with pytest.raises(ValueError, match=r"`cache_references` must be True or False, got 'yes'"):
        QuantizedEvaluation(cache_references="yes")
    with pytest.raises(ValueError, match=r"`quantization_aware_retain` must be True or False, got 1"):
        UnlearningModule("x", quantization_aware_retain=1)
    with pytest.raises(ValueError, match=r"`freeze_others` must be True or False, got 'no'"):
        PreserveQuantization(freeze_others="no")


def test_preserve_quantization_refuses_sharding_and_an_empty_selection(tmp_path):
    with pytest.raises(UnsupportedStrategyError, match=r"PreserveQuantization projects whole weight.*'ddp'"):
        PreserveQuantization().setup(SimpleNamespace(strategy=FSDPStrategy()), None, "fit")

    from tests.callbacks.test_quantization_survival import Unlearner, forget_retain_batches, make_trainer

    trainer = make_trainer(tmp_path, 1, [PreserveQuantization(modules=["no_such_proj"])], logger=False)
    with pytest.raises(ValueError, match=r"`modules`=\['no_such_proj'\] selects no linear layer to preserve"):
        trainer.fit(Unlearner(), forget_retain_batches(1))


def test_a_deployment_for_full_precision_has_no_scheme():
    assert Deployment("full").scheme is None and as_deployments(["full"])[0].precision == "full"
