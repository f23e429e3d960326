"""The argument checks added with the deployment package, PreserveQuantization and the results cache fire."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import FSDPStrategy

from lit_unlearn import FourBitBase, UnlearningModule
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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"four_bit": FourBitBase(), "lora": None}, r"only a LoRA adapter can train over it \(QLoRA\), but `lora` is null"),
        ({"four_bit": FourBitBase(), "quantization_aware": "nf4"}, r"with `four_bit` the base is already 4-bit"),
        ({"four_bit": {"quant_type": "int4"}}, r"'int4' is not one of bitsandbytes' 4-bit formats"),
        ({"four_bit": {"compute_dtype": "float64"}}, r"compute dtype 'float64' must be one of"),
        ({"four_bit": {"double_quant": "yes"}}, r"`double_quant` must be True or False, got 'yes'"),
        ({"four_bit": {"quant": "nf4"}}, r"`four_bit` has no field 'quant'; its fields are quant_type"),
        ({"four_bit": True}, r"`four_bit`=True is not a 4-bit base format.*`four_bit: \{\}`"),
        ({"quantization_config": {"load_in_8bit": True}}, r"loads the base in 8 bits \(LLM.int8\)"),
        ({"quantization_config": {"bnb_4bit_quant_type": "nf4"}}, r"does not set `load_in_4bit: true`"),
        ({"quantization_config": {"load_in_4bit": True}, "four_bit": FourBitBase()}, r"give the 4-bit base one way"),
    ],
)
def test_a_4bit_base_is_checked_before_loading(kwargs, match):
    # The model path does not exist: every check fires before anything is read.
    with pytest.raises(ValueError, match=match):
        UnlearningModule("/nonexistent/model", **kwargs)


def test_a_bitsandbytes_config_gives_the_same_base_as_four_bit():
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True)
    from_config = UnlearningModule("/nonexistent/model", quantization_config=config, dtype="bfloat16")
    typed = UnlearningModule("/nonexistent/model", four_bit=FourBitBase("fp4", double_quant=True), dtype="bfloat16")
    # transformers' default compute dtype is float32; the dict form names it, so it is kept.
    assert from_config.four_bit_base.quant_type == typed.four_bit_base.quant_type == "fp4"
    assert from_config.four_bit_base.double_quant and typed.four_bit_base.compute_dtype == "bfloat16"
    # Recorded as `four_bit`'s fields, the dtype resolved: a checkpoint's hparams rebuild the same base.
    assert from_config.hparams["four_bit"] == {"quant_type": "fp4", "compute_dtype": "float32", "double_quant": True}
    assert "quantization_config" not in from_config.hparams
    assert UnlearningModule(**from_config.hparams).four_bit_base == from_config.four_bit_base
    assert typed.hparams["four_bit"]["compute_dtype"] == "bfloat16"
    assert UnlearningModule("/nonexistent/model").four_bit_base is None
    assert UnlearningModule("/nonexistent/model").hparams["four_bit"] is None


def test_four_bit_defaults_to_nf4_computing_in_the_module_dtype():
    module = UnlearningModule("/nonexistent/model", four_bit={}, dtype="bfloat16")
    assert module.four_bit_base == FourBitBase("nf4", "bfloat16", False)


def test_fsdp1_and_deepspeed_are_refused_before_loading_with_the_fsdp2_fix():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    module = UnlearningModule("/nonexistent/model")
    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        module._trainer = SimpleNamespace(strategy=strategy)
        with pytest.raises(ValueError, match=r"`strategy`=(FSDPStrategy|DeepSpeedStrategy) wraps.*lit_unlearn.strategies.FSDP2Strategy"):
            module.setup("fit")


def test_the_module_refuses_flat_parameter_strategies_through_the_one_strategy_policy():
    from lightning.pytorch.strategies import DDPStrategy

    from lit_unlearn.strategies import FSDP2Strategy

    module = UnlearningModule("/nonexistent/model")
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(), datamodule=None)
    with pytest.raises(ValueError, match=r"UnlearningModule shards with FSDP2; `strategy`=FSDPStrategy wraps the model "
                                         r"in flat parameters it does not read\. Use `strategy: lit_unlearn\.strategies"):
        module.setup("validate")
    for served in (DDPStrategy(), FSDP2Strategy()):
        module._trainer = SimpleNamespace(strategy=served, datamodule=None)
        module.setup("validate")  # served: setup goes on to its other checks, which this run passes
