import csv

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.callbacks.quantized_evaluation import QuantizedEvaluation

from .muse_fixtures import build_llama, sentences

FAST = {
    "max_items": 2,
    "batch_size": 2,
    "verbmem_max_new_tokens": 3,
    "knowmem_max_new_tokens": 3,
    "progress": False,
}


class GradAscent(LightningModule):
    """The smallest unlearning module the callback can serve: ``self.model`` and ``self.tokenizer``."""

    def __init__(self, model, tokenizer, texts):
        super().__init__()
        self.save_hyperparameters({"objective": "ga"})
        self.model, self.tokenizer = model, tokenizer
        ids = [tokenizer(t)["input_ids"][:12] for t in texts]
        self.ids = torch.tensor([i + [0] * (12 - len(i)) for i in ids])

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return -self.model(input_ids=ids, labels=ids).loss

    def test_step(self, batch, batch_idx):
        (ids,) = batch
        self.log("test/nll", self.model(input_ids=ids, labels=ids).loss)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.ids), batch_size=2)

    test_dataloader = train_dataloader


def _module(tokenizer, lora=True, seed=0):
    seed_everything(seed)
    model = build_llama(len(tokenizer), seed=seed)
    if lora:
        model = apply_lora(model, LoRA(r=4, alpha=8.0, dropout=0.05))
    return GradAscent(model.train(), tokenizer, sentences(4, seed=3))


def _trainer(tmp_path, callbacks, **kwargs):
    return Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **kwargs,
    )


def test_fit_logs_curves_writes_the_table_and_leaves_training_untouched(tmp_path, tokenizer, muse_dir):
    evaluation = QuantizedEvaluation(
        data=muse_dir,
        precisions=["full", "nf4"],
        auc_retrain=0.5,
        every_n_steps=1,
        tasks=["knowmem_forget", "privleak"],
        **FAST,
    )
    module = _module(tokenizer)
    trainer = _trainer(tmp_path, [evaluation])
    trainer.fit(module)

    with open(trainer.logger.experiment.metrics_file_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    logged = {(r["step"], k) for r in rows for k, v in r.items() if k.startswith("eval/") and v}
    for step in ("1", "2"):  # after updates 1 and 2 (the step is the updates applied)
        assert {(step, "eval/full/knowmem"), (step, "eval/nf4/privleak"), (step, "eval/nf4/auc")} <= logged
    out = tmp_path / "run" / "version_0"
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| ga (LoRA) | full |" in table and "| ga (LoRA) | nf4 |" in table
    assert (out / "results.csv").exists() and (out / "results.json").exists()
    assert module.model.training  # train mode came back after each evaluation

    # The same run without the callback ends with bit-identical weights: evaluation changed nothing.
    plain = _module(tokenizer)
    _trainer(tmp_path / "plain", []).fit(plain)
    for (name, a), (_, b) in zip(module.model.named_parameters(), plain.model.named_parameters()):
        assert torch.equal(a, b), name


def test_test_loop_writes_reference_rows_and_computes_auc_retrain(tmp_path, tokenizer, muse_dir):
    retrain_dir = tmp_path / "retrain"
    build_llama(len(tokenizer), seed=5).save_pretrained(retrain_dir)
    evaluation = QuantizedEvaluation(
        data=muse_dir,
        precisions=["full", "int8"],
        references={"retrain": str(retrain_dir)},
        tasks=["privleak"],
        output_dir=str(tmp_path / "table"),
        method="GA",
        **FAST,
    )
    module = _module(tokenizer, lora=False)
    _trainer(tmp_path, [evaluation]).test(module)  # runs under inference mode

    table = evaluation.table
    assert table.methods == ["retrain", "GA"]
    retrain_auc = table.get("retrain", "full")["auc"]
    assert table.get("retrain", "full")["privleak"] == pytest.approx(0.0, abs=1e-9)
    ga = table.get("GA", "full")
    assert ga["privleak"] == pytest.approx((ga["auc"] - retrain_auc) / retrain_auc * 100)
    assert (tmp_path / "table" / "results.md").exists()
    assert evaluation.state_dict()["computed_auc_retrain"] == retrain_auc


class _StatesAtTrainStart(Callback):
    """Records the watched callbacks' states once a checkpoint has been restored into them."""

    def __init__(self, watched):
        self.watched, self.seen = watched, None

    def on_train_start(self, trainer, pl_module):
        self.seen = [callback.state_dict() for callback in self.watched]


def test_two_evaluations_in_one_fit_keep_their_own_state_through_a_checkpoint(tmp_path, tokenizer, muse_dir):
    def pair():
        settings = {"data": muse_dir, "auc_retrain": 0.5, "every_n_steps": 1, "tasks": ["knowmem_forget"],
                    "cache_references": False, **FAST}
        return QuantizedEvaluation(precisions=["full"], **settings), QuantizedEvaluation(precisions=["nf4"], **settings)

    full, nf4 = pair()
    assert full.state_key != nf4.state_key
    assert QuantizedEvaluation(data=muse_dir, precisions=["int4:64"]).state_key != QuantizedEvaluation(
        data=muse_dir, precisions=["int4"]).state_key, "a block size is part of what is measured"
    trainer = _trainer(tmp_path, [full, nf4])
    trainer.fit(_module(tokenizer))
    assert full.state_dict()["curve"] and full.state_dict()["curve"] != nf4.state_dict()["curve"]
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert saved[full.state_key] == full.state_dict() and saved[nf4.state_key] == nf4.state_dict()

    resumed = pair()
    record = _StatesAtTrainStart(resumed)
    Trainer(
        max_steps=3, logger=False, callbacks=[*resumed, record], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
        default_root_dir=tmp_path / "resumed",
    ).fit(_module(tokenizer), ckpt_path=path)
    assert record.seen == [full.state_dict(), nf4.state_dict()]

    # A checkpoint from before the key (state under the class name) still resumes a lone instance.
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["callbacks"] = {"QuantizedEvaluation": checkpoint["callbacks"].pop(nf4.state_key)}
    torch.save(checkpoint, tmp_path / "legacy.ckpt")
    lone = pair()[1]
    record = _StatesAtTrainStart([lone])
    Trainer(
        max_steps=3, logger=False, callbacks=[lone, record], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
        default_root_dir=tmp_path / "legacy",
    ).fit(_module(tokenizer), ckpt_path=tmp_path / "legacy.ckpt")
    assert record.seen == [nf4.state_dict()]


def test_evaluation_model_hook_and_missing_tokenizer(tmp_path, tokenizer, muse_dir):
    class Hooked(GradAscent):
        def evaluation_model(self):
            return self.model, self.tokenizer

    module = _module(tokenizer)
    hooked = Hooked(module.model, tokenizer, sentences(2, seed=1))
    evaluation = QuantizedEvaluation(
        data=muse_dir, precisions=["full"], tasks=["privleak"], auc_retrain="news", **FAST
    )
    _trainer(tmp_path, [evaluation]).test(hooked)
    assert evaluation.table.get("ga (LoRA)", "full") is not None

    module.tokenizer = None
    with pytest.raises(ValueError, match="needs a tokenizer .* Pass `tokenizer=`"):
        evaluation._model_and_tokenizer(module)
    module.model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="found Linear at `GradAscent.model`, not a causal LM"):
        evaluation._model_and_tokenizer(module)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precisions": ["full", "int9"]}, "`precision`='int9' is not supported"),
        ({"precisions": []}, "`precisions` is empty"),
        ({"every_n_steps": 0}, "`every_n_steps`=0 must be a positive integer, or None"),
        ({"batch_size": 0}, "`batch_size`=0 must be a positive integer"),
        ({"references": {"retrain": ""}}, "`references` entry 'retrain'"),
        ({"convention": "tofu"}, "`convention`='tofu' is not supported"),
        ({"auc_retrain": "tofu"}, "not a known corpus"),
        ({"tasks": ["privleak", "rouge"]}, "unknown: \\['rouge'\\]"),
        ({"quantizer": "bitsandbytes", "precisions": ["int4"]}, "bitsandbytes has no int4"),
    ],
)
def test_arguments_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizedEvaluation(**kwargs)


def test_fsdp1_fit_turns_the_callback_off_and_fsdp1_test_is_refused_but_fsdp2_is_served():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from lit_unlearn.strategies import FSDP2Strategy

    evaluation = QuantizedEvaluation()
    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.warns(UserWarning, match="It is off for this fit; train with FSDP2Strategy"):
        evaluation.setup(trainer, None, "fit")
    assert not evaluation._active
    with pytest.raises(ValueError, match="but FSDPStrategy shards weights its own way.*FSDP2Strategy"):
        evaluation.setup(trainer, None, "test")
    for stage in ("fit", "test"):
        evaluation.setup(SimpleNamespace(strategy=FSDP2Strategy()), None, stage)
        assert evaluation._active


def test_the_strategy_messages_in_full():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from lit_unlearn.deployment import UnsupportedStrategyError

    why = (
        "QuantizedEvaluation deploys each weight as its layer runs, which it can do under FSDP2 "
        "(ModelParallelStrategy, lit_unlearn.strategies.FSDP2Strategy), but DeepSpeedStrategy shards weights its "
        "own way."
    )
    trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy))
    with pytest.raises(UnsupportedStrategyError) as error:
        QuantizedEvaluation().setup(trainer, None, "validate")
    assert str(error.value) == (
        f"{why} Run `lit-unlearn test` with `--trainer.strategy lit_unlearn.strategies.FSDP2Strategy`, on one "
        "device, or with strategy='ddp', where each rank evaluates a shard of the items."
    )
    with pytest.warns(UserWarning) as warned:
        QuantizedEvaluation().setup(trainer, None, "fit")
    assert [str(w.message) for w in warned] == [
        f"{why} It is off for this fit; train with FSDP2Strategy to evaluate during the fit, or evaluate the saved "
        "model with `lit-unlearn test`."
    ]
    evaluation = QuantizedEvaluation()
    for stage in ("fit", "test"):
        evaluation.setup(SimpleNamespace(strategy=DDPStrategy()), None, stage)  # each rank a shard of the items
        assert evaluation._active
