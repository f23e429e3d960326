"""QuantizationSurvival on tiny models: logged statistics, LoRA deltas, bit-identical training, resume."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.callbacks import QuantizationSurvival
from lit_unlearn.callbacks.quantization_survival import HISTORY_KEYS, TABLE_NAME
from lit_unlearn.quantization import survival_stats

VOCAB = 64
STATS = ("changed", "below_half_step", "retained", "cosine", "rel_error")


def tiny_llama(seed: int = 0, dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attention_dropout=dropout,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def split(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def forget_retain_batches(n: int, repeat: bool = False) -> DataLoader:
    """``n`` CombinedLoader-style batches ``{"forget": …, "retain": …}`` of 2 sequences of 12 tokens.

    Forget and retain draw from disjoint token ranges, so ascending one and descending the other do not
    cancel out. ``repeat`` serves one batch ``n`` times, which makes training independent of batch order.
    """
    g = torch.Generator().manual_seed(0)
    batches = [
        {"forget": split(torch.randint(3, 24, (2, 12), generator=g)),
         "retain": split(torch.randint(24, VOCAB, (2, 12), generator=g))}
        for _ in range(1 if repeat else n)
    ]
    batches = batches * n if repeat else batches
    return DataLoader(batches, batch_size=None)


class Unlearner(LightningModule):
    """Gradient ascent on forget plus NLL on retain, on a tiny HF Llama (``model(**batch).loss``)."""

    def __init__(self, lora: bool = False, optimizer: str = "adam", lr: float = 1e-2, dropout: float = 0.0):
        super().__init__()
        self.model = tiny_llama(dropout=dropout)
        if lora:
            self.model = apply_lora(self.model, LoRA(r=4, alpha=8, dropout=max(dropout, 0.05)))
        self.optimizer, self.lr = optimizer, lr

    def training_step(self, batch, batch_idx):
        loss = -self.model(**batch["forget"]).loss + self.model(**batch["retain"]).loss
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)


class PlainRegressor(LightningModule):
    """A user's own module: an nn.Sequential, tuple batches, its own loss; no `.model`, no LoRA."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def regression_data(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * 4, 16, generator=g)
    return DataLoader(list(zip(x, x.sum(1, keepdim=True).sin())), batch_size=4)


def make_trainer(tmp_path: Path, max_steps: int, callbacks=(), **kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="logs"), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
    )
    defaults.update(kwargs)
    return Trainer(callbacks=list(callbacks), **defaults)


def logged(trainer: Trainer) -> list[dict[str, float]]:
    """Rows of the CSVLogger's metrics.csv, empty cells dropped, values as floats."""
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def last_logged(trainer: Trainer, key: str) -> float:
    return [row[key] for row in logged(trainer) if key in row][-1]


# ---------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, "`every_n_steps`"),
        ({"every_n_steps": 2.5}, "`every_n_steps`"),
        ({"schemes": ("nf4", "nf3")}, r"`schemes`='nf3' is not supported; choose one of .*'fp4'"),
        ({"schemes": ()}, "`schemes` is empty; name at least one of 'int8'"),
        ({"schemes": ("nf4", "nf4")}, "twice"),
        ({"block_size": 48}, r"`block_size`=48.*64"),
        ({"modules": "q_proj("}, "`modules`.*regular expression"),
        ({"modules": []}, "`modules`"),
        ({"probe_batches": 0}, "`probe_batches`"),
        ({"warn_below": float("nan")}, "`warn_below`"),
        ({"functional": "yes"}, "`functional`"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizationSurvival(**kwargs)


def test_modules_matching_nothing_lists_the_layers(tmp_path):
    trainer = make_trainer(tmp_path, 1, [QuantizationSurvival(modules=["no_such_proj"])], logger=False)
    with pytest.raises(ValueError, match=r"selects no linear layer.*model\.layers\.0\.self_attn\.q_proj"):
        trainer.fit(Unlearner(), forget_retain_batches(2))


def test_sharding_strategies_other_than_fsdp2_are_rejected():
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(MisconfigurationException, match=r"`strategy`=FSDPStrategy shards them.*ModelParallelStrategy"):
        QuantizationSurvival().setup(trainer, None, "fit")
    QuantizationSurvival().setup(SimpleNamespace(strategy=ModelParallelStrategy()), None, "fit")  # FSDP2: served


# ---------------------------------------------------------------------------------------- weight space
def test_tiny_learning_rate_changes_almost_no_code(tmp_path):
    survival = QuantizationSurvival(every_n_steps=2, warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    trainer.fit(Unlearner(optimizer="sgd", lr=1e-7), forget_retain_batches(4))
    for scheme in ("nf4", "fp4"):
        assert last_logged(trainer, f"survival/{scheme}/changed") < 0.01
        assert last_logged(trainer, f"survival/{scheme}/below_half_step") > 0.99
    # The forget loss barely moves, so the effect ratio would divide noise by ~0: it is not logged.
    assert not any("survival/nf4/effect_retained" in row for row in logged(trainer))
    assert survival.functional_history[-1]["effect_retained"] is None


def test_large_learning_rate_survives_in_weights_and_function(tmp_path):
    survival = QuantizationSurvival(every_n_steps=2, warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    trainer.fit(Unlearner(optimizer="adam", lr=1e-2), forget_retain_batches(4))
    rows = logged(trainer)
    steps = [row["step"] for row in rows if "survival/nf4/changed" in row]
    assert len(steps) == 2  # steps 2 and 4; the fit-end check does not repeat step 4
    for scheme in ("nf4", "fp4"):
        assert last_logged(trainer, f"survival/{scheme}/changed") > 0.5
        assert last_logged(trainer, f"survival/{scheme}/retained") > 0.9
        assert last_logged(trainer, f"survival/{scheme}/cosine") > 0.9
        assert last_logged(trainer, f"survival/{scheme}/rel_error") < 0.5
        assert 0.5 < last_logged(trainer, f"survival/{scheme}/effect_retained") < 1.5
        assert abs(last_logged(trainer, f"survival/{scheme}/retain_shift")) < 0.5
        assert trainer.callback_metrics[f"survival/{scheme}/cosine"] == pytest.approx(
            last_logged(trainer, f"survival/{scheme}/cosine")
        )

    # Per-layer view: history, layer_table and the CSV table agree, with the documented columns.
    assert all(tuple(row) == HISTORY_KEYS for row in survival.history)
    table = survival.layer_table
    assert {row["step"] for row in table} == {4}
    assert len(table) == 2 * 14  # 2 schemes x 2 blocks x 7 projections; the output head is not watched
    assert not any("lm_head" in row["layer"] for row in table)
    with open(Path(trainer.log_dir) / TABLE_NAME) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(survival.history) == 2 * len(table)
    assert float(written[-1]["cosine"]) == pytest.approx(survival.history[-1]["cosine"])


class RecordingLogger(Logger):
    """Any logger: records what it is given and, like W&B, refuses steps that go back in time."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        # Loggers with per-series steps (Neptune, W&B's define_metric axes) need each key's steps to grow.
        for key in metrics:
            last = max((s for s, m in self.calls if key in m), default=None)
            assert last is None or step > last, f"{key}: step {step} after {last}"
        self.calls.append((step, dict(metrics)))


def test_any_logger_gets_the_metrics_at_lightnings_steps(tmp_path):
    recorder = RecordingLogger()
    survival = QuantizationSurvival(every_n_steps=2, schemes=("fp4",), warn_below=float("-inf"))
    make_trainer(tmp_path, 4, [survival], logger=[recorder, CSVLogger(tmp_path)]).fit(
        Unlearner(), forget_retain_batches(4)
    )
    survival_steps = [step for step, metrics in recorder.calls if "survival/fp4/retained" in metrics]
    loss_steps = [step for step, metrics in recorder.calls if "loss" in metrics]
    # One convention: the step is the optimizer updates applied when the value was measured. The check
    # after update k is at k, as in the per-layer table; the loss of the batch that makes update k was
    # measured before it, at k - 1 (Lightning's own).
    assert loss_steps == [0, 1, 2, 3]
    assert survival_steps == [2, 4] == sorted({row["step"] for row in survival.history})
    assert {"survival/fp4/changed", "survival/fp4/effect_retained", "survival/fp4/retain_shift"} <= next(
        metrics for _, metrics in recorder.calls if "survival/fp4/retained" in metrics
    ).keys()


def test_plain_user_module_is_watched_without_functional_check(tmp_path, caplog):
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",))
    trainer = make_trainer(tmp_path, 4, [survival])
    with caplog.at_level("INFO"):
        trainer.fit(PlainRegressor(), regression_data())
    assert {row["layer"] for row in survival.layer_table} == {"net.0", "net.2", "net.4"}
    assert last_logged(trainer, "survival/nf4/changed") > 0.1
    assert last_logged(trainer, "survival/nf4/cosine") > 0.5
    skipped = [m for m in caplog.messages if "skipping the functional check" in m]
    assert len(skipped) == 1 and "not a mapping" in skipped[0]
    assert survival.functional_history == []


def test_without_per_layer_rows_only_scalars_are_kept(tmp_path):
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), log_per_layer=False, functional=False)
    trainer = make_trainer(tmp_path, 2, [survival])
    trainer.fit(Unlearner(), forget_retain_batches(2))
    assert survival.history == [] and survival.layer_table == []
    assert not (Path(trainer.log_dir) / TABLE_NAME).exists()
    assert any("survival/nf4/retained" in row for row in logged(trainer))


def test_modules_regex_and_names_select_layers(tmp_path):
    kwargs = dict(every_n_steps=1, schemes=("nf4",), functional=False)
    by_regex = QuantizationSurvival(modules=r"layers\.1\..*proj$", **kwargs)
    by_name = QuantizationSurvival(modules=["down_proj"], **kwargs)
    make_trainer(tmp_path, 1, [by_regex, by_name], logger=False).fit(Unlearner(), forget_retain_batches(1))
    assert len(by_regex.layer_table) == 7 and all(".layers.1." in r["layer"] for r in by_regex.layer_table)
    assert [r["layer"] for r in by_name.layer_table] == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]


# ---------------------------------------------------------------------------------------- LoRA
def test_lora_delta_is_merge_and_unload_minus_base(tmp_path):
    module = Unlearner(lora=True, lr=5e-2)
    survival = QuantizationSurvival(every_n_steps=3, schemes=("nf4", "int8"), functional=False)
    make_trainer(tmp_path, 3, [survival], logger=False).fit(module, forget_retain_batches(3))

    base = {n: p.detach().clone() for n, p in module.model.get_base_model().named_parameters()}
    merged = copy.deepcopy(module.model).merge_and_unload()
    rows = {(r["layer"], r["scheme"]): r for r in survival.layer_table}
    assert {layer for layer, _ in rows} == {
        f"model.layers.{i}.{p}" for i in range(2)
        for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    for (layer, scheme), row in rows.items():
        w0 = base[f"{layer}.base_layer.weight"]
        w1 = merged.get_submodule(layer).weight.detach()
        assert row["delta_norm"] == pytest.approx(float((w1 - w0).norm()), rel=1e-6)
        expected = survival_stats(w0, w1, scheme).as_dict()
        for key in STATS:
            assert row[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (layer, scheme, key)


def test_lora_functional_check_uses_the_merged_quantized_model(tmp_path):
    survival = QuantizationSurvival(every_n_steps=4, schemes=("nf4",), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    module = Unlearner(lora=True, lr=1e-2)
    trainer.fit(module, forget_retain_batches(4))
    row = survival.functional_history[-1]
    # The quantized current model carries the update: its loss moved with the full-precision one.
    assert row["forget_q"] != row["forget_q_original"]
    assert 0.5 < row["effect_retained"] < 1.5
    # Adapters are back on and trainable after the probe runs.
    assert all(p.requires_grad for n, p in module.model.named_parameters() if "lora_" in n)
    assert not any(layer.disable_adapters for layer in module.model.modules() if hasattr(layer, "lora_A"))


# ---------------------------------------------------------------------------------------- side effects
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_is_bit_identical_with_the_callback(tmp_path, lora):
    def train(callbacks):
        seed_everything(7)
        module = Unlearner(lora=lora, lr=1e-2, dropout=0.2)
        make_trainer(tmp_path, 6, callbacks, logger=False).fit(module, forget_retain_batches(6))
        return {n: p.detach().clone() for n, p in module.named_parameters()}, torch.get_rng_state()

    survival = QuantizationSurvival(every_n_steps=2, probe_batches=2, warn_below=float("-inf"))
    with_callback, rng_with = train([survival])
    without, rng_without = train([])
    assert with_callback.keys() == without.keys()
    for name in without:
        torch.testing.assert_close(with_callback[name], without[name], atol=0, rtol=0, msg=name)
    assert torch.equal(rng_with, rng_without)


def test_probe_hook_is_preferred_and_low_survival_warns(tmp_path):
    class WithHook(Unlearner):
        calls = 0

        def quantization_probe_loss(self, batch):
            WithHook.calls += 1
            return self.model(**batch).loss

    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=10.0)
    expected = r"only \d+% of the forgetting survives nf4 at step 2; the quantized model behaves like"
    with pytest.warns(UserWarning, match=expected) as record:
        make_trainer(tmp_path, 4, [survival], logger=False).fit(WithHook(), forget_retain_batches(4))
    messages = [str(w.message) for w in record if "survives" in str(w.message)]
    assert len(messages) == 1  # once per fall below the threshold, not at every check
    assert "Layers whose update is mostly noise or erased" in messages[0] or "No single layer" in messages[0]
    # Original (fp, nf4) once when the probe is taken, current (fp, nf4) at steps 2 and 4; 2 splits each.
    assert WithHook.calls == (2 + 2 * 2) * 2


def test_gradient_accumulation_checks_once_per_optimizer_step(tmp_path):
    survival = QuantizationSurvival(every_n_steps=1, schemes=("nf4",), functional=False)
    make_trainer(tmp_path, 2, [survival], logger=False, accumulate_grad_batches=2).fit(
        Unlearner(), forget_retain_batches(4)
    )
    assert sorted({row["step"] for row in survival.history}) == [1, 2]
    assert len(survival.history) == 2 * 14


# ---------------------------------------------------------------------------------------- resume
def test_resume_keeps_history_snapshot_and_probe(tmp_path):
    def run(root, stop, ckpt_path=None):
        seed_everything(3)
        survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        trainer = make_trainer(root, stop, [survival, checkpoint], enable_checkpointing=True, logger=False)
        # One repeated batch: Lightning may replay a batch when it resumes at an epoch boundary, and the
        # comparison with the uninterrupted run must not depend on that.
        data = forget_retain_batches(4, repeat=True)
        trainer.fit(Unlearner(optimizer="sgd", lr=0.5), data, ckpt_path=ckpt_path)
        return survival

    straight = run(tmp_path / "straight", 8)
    first = run(tmp_path / "resumed", 4)
    saved = torch.load(tmp_path / "resumed" / "ckpt" / "last.ckpt", weights_only=False)
    # The whole state in one entry: history, original losses, the snapshot of W0 and the probe.
    assert not any(key.startswith("QuantizationSurvival") for key in saved["callbacks"])
    (entry,) = saved["quantization_survival"].values()
    assert set(entry) == {"history", "functional_history", "last_step", "original_losses", "original_losses_heldout",
                          "snapshot", "probe"}
    assert entry["history"] == first.history and entry["last_step"] == 4 and len(entry["snapshot"]) == 14
    resumed = run(tmp_path / "resumed", 8, ckpt_path=tmp_path / "resumed" / "ckpt" / "last.ckpt")

    assert sorted({r["step"] for r in resumed.history}) == [2, 4, 6, 8]
    assert resumed.history[: len(first.history)] == first.history
    # Same ΔW from the same original weights and the same probe as an uninterrupted run.
    for got, want in zip(resumed.history, straight.history, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            expected = pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value
            assert got[key] == expected
    for got, want in zip(resumed.functional_history, straight.functional_history, strict=True):
        assert got["forget_q"] == pytest.approx(want["forget_q"], rel=1e-6)
        assert got["forget_fp_original"] == pytest.approx(want["forget_fp_original"], rel=1e-6)


def test_checkpoint_state_is_one_entry_of_plain_python():
    survival = QuantizationSurvival()
    survival.history = [dict(zip(HISTORY_KEYS, (2, "nf4", "a", 0.1, 0.9, 1.0, 0.9, 0.2, 1e-3, 1e-3, 64)))]
    checkpoint = {}
    survival.on_save_checkpoint(None, None, checkpoint)
    # One channel: everything under the callback's own key, nothing through Lightning's `state_dict`.
    assert survival.state_dict() == {}
    assert list(checkpoint) == ["quantization_survival"] and list(checkpoint["quantization_survival"]) == [
        survival.state_key
    ]
    state = checkpoint["quantization_survival"][survival.state_key]
    restored = QuantizationSurvival()
    restored.on_load_checkpoint(None, None, copy.deepcopy(checkpoint))
    assert restored.history == survival.history and restored.layer_table == survival.history

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(map(plain, value))
        return value is None or isinstance(value, (str, int, float, bool)) and not (
            isinstance(value, float) and math.isnan(value)
        )

    assert plain(state)


def test_resume_with_another_interval_keeps_history_and_snapshot(tmp_path, recwarn):
    """The state key names the measurement (schemes, layers), not the interval: a resumed run that checks
    every 3 steps instead of 2 keeps the history and the saved W0, and measures ΔW from the true original."""
    def run(root, stop, every, ckpt_path=None):
        seed_everything(3)
        survival = QuantizationSurvival(every_n_steps=every, schemes=("nf4",), functional=False)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        trainer = make_trainer(root, stop, [survival, checkpoint], enable_checkpointing=True, logger=False)
        trainer.fit(Unlearner(optimizer="sgd", lr=0.5), forget_retain_batches(4, repeat=True), ckpt_path=ckpt_path)
        return survival

    assert QuantizationSurvival(every_n_steps=2).state_key == QuantizationSurvival(every_n_steps=3).state_key
    assert QuantizationSurvival(schemes=("nf4",)).state_key != QuantizationSurvival(schemes=("fp4",)).state_key
    straight = run(tmp_path / "straight", 6, every=3)
    first = run(tmp_path / "resumed", 4, every=2)
    resumed = run(tmp_path / "resumed", 6, every=3, ckpt_path=tmp_path / "resumed" / "ckpt" / "last.ckpt")
    assert sorted({r["step"] for r in resumed.history}) == [2, 4, 6]
    assert resumed.history[: len(first.history)] == first.history
    assert not [w for w in recwarn if "holds no snapshot" in str(w.message)]
    # ΔW at step 6 is measured from the original W0, as in the uninterrupted run.
    last = [r for r in resumed.history if r["step"] == 6]
    want = [r for r in straight.history if r["step"] == 6]
    for got, expected in zip(last, want, strict=True):
        assert got["delta_norm"] == pytest.approx(expected["delta_norm"], rel=1e-6)


def test_resume_with_other_schemes_says_it_starts_a_new_history(tmp_path):
    def run(root, stop, schemes, ckpt_path=None):
        survival = QuantizationSurvival(every_n_steps=2, schemes=schemes, functional=False)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        trainer = make_trainer(root, stop, [survival, checkpoint], enable_checkpointing=True, logger=False)
        trainer.fit(Unlearner(optimizer="sgd", lr=0.5), forget_retain_batches(4, repeat=True), ckpt_path=ckpt_path)
        return survival

    run(tmp_path, 2, ("nf4",))
    with pytest.warns(UserWarning, match=r"other schemes or layers.*starts a new history.*same `schemes`"):
        resumed = run(tmp_path, 4, ("fp4",), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted({r["step"] for r in resumed.history}) == [4]


def test_sharding_error_is_one_type_for_both_callbacks():
    from lit_unlearn.callbacks.quantized_evaluation import QuantizedEvaluation
    from lit_unlearn.deployment import UnsupportedStrategyError

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(UnsupportedStrategyError) as survival_error:
        QuantizationSurvival().setup(trainer, None, "fit")
    with pytest.raises(UnsupportedStrategyError) as evaluation_error:
        QuantizedEvaluation().setup(trainer, None, "test")
    for error in (survival_error.value, evaluation_error.value):
        assert isinstance(error, MisconfigurationException) and isinstance(error, ValueError)
        assert "FSDPStrategy shards" in str(error) and "FSDP2" in str(error)


# ------------------------------------------------------------------------ formats: detected and per layer
def test_base_weights_on_the_q4_1_grid_are_detected_and_watched(tmp_path, caplog):
    from lit_unlearn.deployment import quantize_model_

    seed_everything(0)
    module = Unlearner(lora=True, lr=1e-4)
    quantize_model_(module.model, "q4_1")  # every base weight on the Q4_1 grid, as a model read from a Q4_1 file
    survival = QuantizationSurvival(every_n_steps=3, schemes=["nf4"], functional=False)
    state_key = survival.state_key
    trainer = make_trainer(tmp_path, 3, [survival])
    with caplog.at_level("INFO"):
        trainer.fit(module, forget_retain_batches(3))
    lines = [m for m in caplog.messages if "sit on the" in m]
    assert len(lines) == 1 and lines[0].startswith(
        "QuantizationSurvival: the watched weights sit on the q4_1 grid (14 layers): re-quantizing to q4_1 gives "
        "back updates under half a step; watching q4_1 too.")
    assert survival.state_key == state_key, "checkpoints are keyed by the user's schemes only"
    last = [r for r in logged(trainer) if "survival/q4_1/changed" in r][-1]
    assert last["survival/q4_1/changed"] < 0.01
    assert last["survival/q4_1/below_half_step"] > 0.99, "the update is real, and under half a Q4_1 step"
    assert [s.name for s in survival.schemes] == ["nf4"], "after the fit the watched schemes are the user's again"


def test_a_plain_model_is_on_no_grid(tmp_path, caplog):
    survival = QuantizationSurvival(every_n_steps=2, schemes=["nf4"], functional=False)
    trainer = make_trainer(tmp_path, 2, [survival])
    with caplog.at_level("INFO"):
        trainer.fit(Unlearner(lora=True, lr=1e-3), forget_retain_batches(2))
    assert not [m for m in caplog.messages if "sit on the" in m]
    assert {r["scheme"] for r in survival.history} == {"nf4"}


def test_mixtures_and_fitted_groups_are_measured_per_layer_and_named_once(tmp_path, caplog):
    # Hidden 32, FFN 64: q4_k_m's Q4_K falls back to Q5_0; the last layer's v_proj and down_proj (use_more_bits
    # on 2 layers) ask for Q6_K and fall back to Q8_0. int4 at group 48 on 64-wide rows takes group 32.
    from lit_unlearn.deployment import Deployment

    seed_everything(0)
    module = Unlearner(lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    survival = QuantizationSurvival(every_n_steps=2, schemes=["q4_k_m", Deployment("int4", 48)], functional=False)
    trainer = make_trainer(tmp_path, 2, [survival])
    with caplog.at_level("INFO"):
        trainer.fit(module, forget_retain_batches(2))
    lines = [m for m in caplog.messages if "layer formats" in m]
    assert len(lines) == 1 and "q4_k_m → q5_0 on 12 layers" in lines[0] and "q8_0 on 2 layers" in lines[0]
    assert "int4@48 → int4@48 on 12 layers" in lines[0] and "int4@32 on 2 layers (model.layers.0.mlp.down_proj" in lines[0]
    rows = {(r["layer"], r["scheme"]): r for r in survival.layer_table}
    for name, expected in (("model.layers.1.self_attn.v_proj", "q8_0"), ("model.layers.0.self_attn.v_proj", "q5_0"),
                           ("model.layers.1.mlp.down_proj", "q8_0")):
        w0, w1 = before[f"{name}.weight"], module.model.get_submodule(name).weight.detach()
        assert rows[(name, "q4_k_m")]["changed"] == pytest.approx(survival_stats(w0, w1, expected).changed)
    w0, w1 = before["model.layers.0.mlp.down_proj.weight"], module.model.model.layers[0].mlp.down_proj.weight
    assert rows[("model.layers.0.mlp.down_proj", "int4")]["changed"] == pytest.approx(
        survival_stats(w0, w1.detach(), "int4", block_size=32).changed)


def test_schemes_every_layer_keeps_are_not_listed(tmp_path, caplog):
    survival = QuantizationSurvival(every_n_steps=2, schemes=["nf4", "int4"], block_size=None, functional=False)
    trainer = make_trainer(tmp_path, 2, [survival])
    with caplog.at_level("INFO"):
        trainer.fit(Unlearner(lr=1e-3), forget_retain_batches(2))
    assert not [m for m in caplog.messages if "layer formats" in m]
