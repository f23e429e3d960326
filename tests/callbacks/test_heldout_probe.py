"""QuantizationSurvival's held-out probe: forget data the model is not trained on, from the module's or the
DataModule's ``quantization_probe_batches()``, checked against losses of models quantized by hand."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tests.conftest import WORDS, make_texts
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_unlearn.callbacks import QuantizationSurvival
from lit_unlearn.callbacks._survival_probe import heldout_probe
from lit_unlearn.data import ForgetRetainDataModule, load_texts, tokenize
from lit_unlearn.deployment import quantize_model_

VOCAB = 64
HELDOUT = "survival/{}/effect_retained_heldout"


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def split(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def forget_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` plain forget batches of 2 sequences of 12 tokens from the forget token range 3..23."""
    g = torch.Generator().manual_seed(seed)
    return [split(torch.randint(3, 24, (2, 12), generator=g)) for _ in range(n)]


def training_data(n: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    retain = [split(torch.randint(24, VOCAB, (2, 12), generator=g)) for _ in range(n)]
    return DataLoader([{"forget": f, "retain": r} for f, r in zip(forget_batches(n, seed=1), retain)],
                      batch_size=None)


class Unlearner(LightningModule):
    """Gradient ascent on forget plus NLL on retain, with (optionally) a held-out forget probe."""

    def __init__(self, heldout: list | None = None, hook: bool = True) -> None:
        super().__init__()
        self.model = tiny_llama()
        self.heldout = heldout
        if not hook:
            self.quantization_probe_batches = None  # the attribute exists but is no hook

    def training_step(self, batch, batch_idx):
        return -self.model(**batch["forget"]).loss + self.model(**batch["retain"]).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def quantization_probe_batches(self):
        return self.heldout


def make_trainer(root: Path, max_steps: int, callbacks, **kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "default_root_dir": root,
        "logger": CSVLogger(root, name="logs"), "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "log_every_n_steps": 1,
    }
    defaults.update(kwargs)
    return Trainer(callbacks=list(callbacks), **defaults)


def logged(trainer: Trainer) -> list[dict[str, float]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    return sum(float(model(**b).loss) for b in batches) / len(batches)


def quantized(model: nn.Module, scheme: str) -> nn.Module:
    model = copy.deepcopy(model)
    quantize_model_(model, scheme)
    return model


# ---------------------------------------------------------------------------------------- the metric
def test_heldout_effect_equals_losses_of_models_quantized_by_hand(tmp_path):
    heldout = forget_batches(2, seed=5)  # the forget token range, sequences never trained on
    module = Unlearner(heldout)
    original = copy.deepcopy(module.model)
    survival = QuantizationSurvival(every_n_steps=4, schemes=("nf4", "fp4"), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    trainer.fit(module, training_data(4))

    current = module.model
    rows = logged(trainer)
    for scheme in ("nf4", "fp4"):
        fp_cur, fp_orig = mean_loss(current, heldout), mean_loss(original, heldout)
        q_cur, q_orig = mean_loss(quantized(current, scheme), heldout), mean_loss(quantized(original, scheme), heldout)
        assert fp_cur - fp_orig > 0.1  # gradient ascent on forget data raises the held-out forget loss too
        row = [r for r in survival.functional_history if r["scheme"] == scheme][-1]
        assert row["forget_fp_heldout"] == pytest.approx(fp_cur, rel=1e-6)
        assert row["forget_fp_heldout_original"] == pytest.approx(fp_orig, rel=1e-6)
        assert row["forget_q_heldout"] == pytest.approx(q_cur, rel=1e-6)
        assert row["forget_q_heldout_original"] == pytest.approx(q_orig, rel=1e-6)
        expected = (q_cur - q_orig) / (fp_cur - fp_orig)
        key = HELDOUT.format(scheme)
        assert [r[key] for r in rows if key in r] == [pytest.approx(expected, rel=1e-5)]
        assert float(trainer.callback_metrics[key]) == pytest.approx(expected, rel=1e-5)
        # The training probe's metric is still logged, from its own (trained-on) batch.
        assert row["effect_retained"] is not None
        assert row["forget_fp"] != pytest.approx(fp_cur, rel=1e-3)


@pytest.mark.parametrize("hook", [False, True], ids=["no hook", "hook returns None"])
def test_without_a_heldout_probe_nothing_new_is_logged(tmp_path, hook):
    module = Unlearner(None, hook=hook)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    trainer.fit(module, training_data(4))
    rows = logged(trainer)
    assert any("survival/nf4/effect_retained" in r for r in rows)
    assert not any(key.endswith("_heldout") for r in rows for key in r)
    assert not any(key.endswith("_heldout") for key in trainer.callback_metrics)
    assert all(not any(k.endswith("heldout") for k in r) for r in survival.functional_history)
    checkpoint = {}
    survival.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["quantization_survival"][survival.state_key]["original_losses_heldout"] is None


class Projection(LightningModule):
    """Gradient ascent on a linear map's squared error, for inputs in the first 8 of 16 coordinates."""

    def __init__(self, heldout: list) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 16, bias=False)
        self.heldout = heldout

    def quantization_probe_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.proj(x), y)

    def training_step(self, batch, batch_idx):
        return -self.quantization_probe_loss(batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def quantization_probe_batches(self):
        return self.heldout


def plain_batches(n: int, coordinates: slice, seed: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.zeros(4, 16)
        x[:, coordinates] = torch.randn(4, 8, generator=g)
        batches.append([x, torch.randn(4, 16, generator=g)])
    return batches


def test_unrelated_heldout_data_shows_no_forgetting_where_the_training_probe_shows_much(tmp_path):
    # Training inputs live in coordinates 0..7, held-out ones in 8..15: the columns that read the held-out
    # inputs get no gradient, so the full-precision held-out loss does not move at all, while the loss on the
    # trained-on batch rises. The training probe reports forgetting; the held-out probe reports none.
    heldout = plain_batches(2, slice(8, 16), seed=2)
    module = Projection(heldout)
    survival = QuantizationSurvival(every_n_steps=4, schemes=("nf4",), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival])
    trainer.fit(module, DataLoader(plain_batches(4, slice(0, 8), seed=1), batch_size=None))

    row = survival.functional_history[-1]
    assert row["forget_fp"] - row["forget_fp_original"] > 0.05
    assert row["effect_retained"] > 0.5
    assert row["forget_fp_heldout"] == row["forget_fp_heldout_original"]
    assert row["effect_retained_heldout"] is None
    rows = logged(trainer)
    assert any("survival/nf4/effect_retained" in r for r in rows)
    assert not any(HELDOUT.format("nf4") in r for r in rows)


def test_heldout_probe_is_rebuilt_on_resume_and_its_original_losses_come_from_the_checkpoint(tmp_path):
    heldout = forget_batches(2, seed=5)

    def run(root, stop, ckpt_path=None):
        seed_everything(3)
        survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        trainer = make_trainer(root, stop, [survival, checkpoint], enable_checkpointing=True, logger=False)
        data = DataLoader([next(iter(training_data(1)))] * 4, batch_size=None)
        trainer.fit(Unlearner(heldout), data, ckpt_path=ckpt_path)
        return survival

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    saved = torch.load(tmp_path / "resumed" / "ckpt" / "last.ckpt", weights_only=False)
    (entry,) = saved["quantization_survival"].values()
    # The original losses of the held-out probe are saved; its batches are not, only the training probe.
    assert entry["original_losses_heldout"] is not None
    assert [key for key in entry if "heldout" in key] == ["original_losses_heldout"] and len(entry["probe"]) == 1
    resumed = run(tmp_path / "resumed", 4, ckpt_path=tmp_path / "resumed" / "ckpt" / "last.ckpt")
    for got, want in zip(resumed.functional_history, straight.functional_history, strict=True):
        assert got["effect_retained_heldout"] == pytest.approx(want["effect_retained_heldout"], rel=1e-5)
        assert got["forget_q_heldout_original"] == pytest.approx(want["forget_q_heldout_original"], rel=1e-6)


# ---------------------------------------------------------------------------------------- the hook
def test_hook_results_that_are_not_lists_of_batches_are_refused():
    loader = DataLoader(forget_batches(2, seed=0), batch_size=None)
    with pytest.raises(TypeError, match=r"`SimpleNamespace.quantization_probe_batches\(\)` returned a DataLoader.*list\(loader\)"):
        heldout_probe(SimpleNamespace(quantization_probe_batches=lambda: loader), None)
    with pytest.raises(ValueError, match=r"returned an empty list.*or None for no held-out probe"):
        heldout_probe(None, SimpleNamespace(quantization_probe_batches=list))


def test_module_hook_is_preferred_and_the_datamodule_serves_otherwise():
    mine, theirs = forget_batches(1, seed=0), forget_batches(1, seed=1)
    module, data = SimpleNamespace(quantization_probe_batches=lambda: mine), SimpleNamespace(
        quantization_probe_batches=lambda: theirs)
    assert torch.equal(heldout_probe(module, data)[0]["forget"]["input_ids"], mine[0]["input_ids"])
    assert torch.equal(heldout_probe(SimpleNamespace(), data)[0]["forget"]["input_ids"], theirs[0]["input_ids"])
    nothing = SimpleNamespace(quantization_probe_batches=lambda: None)
    assert torch.equal(heldout_probe(nothing, data)[0]["forget"]["input_ids"], theirs[0]["input_ids"])
    assert heldout_probe(SimpleNamespace(), None) is None


# ---------------------------------------------------------------------------------------- DataModule
@pytest.fixture
def heldout_file(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text("\n\n".join(make_texts(5, seed=9, words=WORDS[:7])), encoding="utf-8")
    return str(path)


def test_datamodule_serves_heldout_forget_batches_in_order(tiny_model_dir, text_files, heldout_file):
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, heldout_forget=heldout_file,
                                tokenizer=tiny_model_dir, max_length=16, batch_size=2)
    dm.setup("fit")
    batches = dm.quantization_probe_batches()
    ids = [seq[mask.bool()].tolist() for b in batches for seq, mask in zip(b["input_ids"], b["attention_mask"])]
    assert ids == tokenize(load_texts(dm.heldout_forget), dm.tokenizer, 16, "chunk")
    assert set(dm.datasets) == {"forget"}  # never a training loader
    again = dm.quantization_probe_batches()
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))

    without = ForgetRetainDataModule(forget=text_files["forget"], retain=None, tokenizer=tiny_model_dir)
    without.setup("fit")
    assert without.quantization_probe_batches() is None


def test_datamodule_names_a_missing_heldout_path(text_files):
    with pytest.raises(FileNotFoundError, match=r"`heldout_forget` path 'no/such.txt' does not exist"):
        ForgetRetainDataModule(forget=text_files["forget"], heldout_forget="no/such.txt")


class HubUnlearner(LightningModule):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(path)

    def training_step(self, batch, batch_idx):
        return -self.model(**batch["forget"]).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_datamodule_heldout_probe_reaches_the_callback_without_changing_training(
    tmp_path, tiny_model_dir, text_files, heldout_file
):
    def train(callbacks, heldout):
        seed_everything(5)
        dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, heldout_forget=heldout,
                                    tokenizer=tiny_model_dir, max_length=16, batch_size=2)
        module = HubUnlearner(tiny_model_dir)
        trainer = make_trainer(tmp_path, 2, callbacks)
        trainer.fit(module, dm)
        return trainer, {n: p.detach().clone() for n, p in module.named_parameters()}, torch.get_rng_state()

    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
    trainer, with_callback, rng_with = train([survival], heldout_file)
    assert HELDOUT.format("nf4") in trainer.callback_metrics
    _, without, rng_without = train([], None)
    # Building the held-out loader draws a seed from the global RNG; the callback hides that draw.
    assert torch.equal(rng_with, rng_without)
    for name, value in without.items():
        torch.testing.assert_close(with_callback[name], value, atol=0, rtol=0, msg=name)
