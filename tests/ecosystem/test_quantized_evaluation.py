"""QuantizedEvaluation's fit-end outputs: precision curves, no second evaluation of the last step, DDP."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_unlearn.callbacks.quantized_evaluation import CURVES_NAME, QuantizedEvaluation
from lit_unlearn.evaluation import references, settings
from tests.evaluation.muse_fixtures import build_llama, build_llama_tokenizer, sentences

FAST = {
    "precisions": ["full", "nf4"], "tasks": ["knowmem_forget", "privleak"], "auc_retrain": 0.5,
    "max_items": 1, "batch_size": 2, "knowmem_max_new_tokens": 2, "progress": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_llama_tokenizer(sentences(300, seed=0))


class GradAscent(LightningModule):
    """A user's module: ``self.model`` and ``self.tokenizer`` are all the callback needs."""

    def __init__(self, tokenizer):
        super().__init__()
        self.save_hyperparameters({"objective": "ga"})
        self.model, self.tokenizer = build_llama(len(tokenizer)).train(), tokenizer
        self.ids = torch.randint(3, len(tokenizer), (8, 12), generator=torch.Generator().manual_seed(0))

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return -self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.ids), batch_size=2)


def fit(tmp_path, evaluation, tokenizer, **kwargs):
    seed_everything(0)
    defaults = dict(
        max_steps=2, logger=CSVLogger(tmp_path, name="run"), callbacks=[evaluation], accelerator="cpu",
        devices=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer = Trainer(**{**defaults, **kwargs})
    trainer.fit(GradAscent(tokenizer))
    return trainer


def test_curves_are_drawn_and_the_last_step_is_evaluated_once(tmp_path, muse_dir, tokenizer, monkeypatch):
    calls = []
    evaluate = settings.evaluate

    def counting(*args, **kwargs):
        # The evaluator hands evaluate its Deployment whole (full precision as the name).
        precision = kwargs["precision"]
        calls.append(precision if isinstance(precision, str) else precision.precision)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(settings, "evaluate", counting)
    evaluation = QuantizedEvaluation(data=muse_dir, every_n_steps=1, **FAST)
    trainer = fit(tmp_path, evaluation, tokenizer)

    # Steps 1 and 2 at two precisions; the fit-end table reuses step 2's results.
    assert sorted(calls) == ["full", "full", "nf4", "nf4"]
    assert (tmp_path / "run" / "version_0" / CURVES_NAME).read_bytes()[:4] == b"\x89PNG"
    curve = evaluation.state_dict()["curve"]
    assert [point["step"] for point in curve] == [1, 2]
    assert curve[-1]["eval/nf4/knowmem"] == evaluation.table.get("ga", "nf4")["knowmem_forget"]
    assert trainer.global_step == 2


def test_one_evaluation_draws_no_curve(tmp_path, muse_dir, tokenizer):
    evaluation = QuantizedEvaluation(data=muse_dir, **FAST)
    fit(tmp_path, evaluation, tokenizer, max_steps=1)
    out = tmp_path / "run" / "version_0"
    assert (out / "results.md").exists() and not (out / CURVES_NAME).exists()


def test_ddp_fit_writes_the_table_and_curves(tmp_path, muse_dir, tokenizer):
    # The output directory is a collective (`trainer.log_dir` broadcasts); asking for it on rank zero
    # alone left the other rank gone and rank zero waiting at the end of every DDP fit.
    evaluation = QuantizedEvaluation(data=muse_dir, every_n_steps=1, output_dir=None, **FAST)
    fit(tmp_path, evaluation, tokenizer, devices=2, strategy="ddp_notebook", logger=False,
        default_root_dir=tmp_path)
    assert (tmp_path / "results.md").exists()
    assert (tmp_path / CURVES_NAME).exists()


def test_reference_rows_come_from_the_cache_on_the_next_run(tmp_path, muse_dir, tokenizer, monkeypatch):
    """A second fit with the same reference, data and settings loads no reference model; a changed
    reference file, precision setting or data set misses the cache."""
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "cache"))
    reference = tmp_path / "reference"
    build_llama(len(tokenizer)).save_pretrained(reference)
    loads = []
    load = references.load_reference
    monkeypatch.setattr(references, "load_reference", lambda *a: loads.append(a[0]) or load(*a))

    def run(name, **overrides):
        evaluation = QuantizedEvaluation(data=muse_dir, references={"retrain": str(reference)},
                                         **{**FAST, "auc_retrain": None, **overrides})
        fit(tmp_path / name, evaluation, tokenizer)
        return evaluation

    first = run("a")
    assert len(loads) == 2, "AUC_retrain, then the rows"
    second = run("b")
    assert len(loads) == 2, "everything about the reference came from the cache"
    assert second.table.get("retrain", "nf4") == first.table.get("retrain", "nf4")
    assert second.state_dict()["computed_auc_retrain"] == first.state_dict()["computed_auc_retrain"]
    run("c", knowmem_max_new_tokens=3)
    assert len(loads) == 4, "another setting is another key (every setting is in it, relevant or not)"
    with torch.no_grad():
        reloaded = type(build_llama(len(tokenizer))).from_pretrained(reference)
        reloaded.model.norm.weight.add_(1.0)
        reloaded.save_pretrained(reference)
    run("d")
    assert len(loads) == 6, "new reference weights: both cache entries miss"
    run("e", cache_references=False)
    assert len(loads) == 8


def test_ddp_fits_share_the_results_cache_without_diverging(tmp_path, muse_dir, tokenizer, monkeypatch):
    """Two ranks read the cache as one (rank zero's answer), so a cached reference never leaves one rank
    evaluating (a collective) while the other waits."""
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "cache"))
    reference = tmp_path / "reference"
    build_llama(len(tokenizer)).save_pretrained(reference)
    tables = []
    for name in ("first", "second"):
        evaluation = QuantizedEvaluation(data=muse_dir, references={"retrain": str(reference)},
                                         output_dir=str(tmp_path / name), **FAST)
        fit(tmp_path / name, evaluation, tokenizer, devices=2, strategy="ddp_notebook", logger=False,
            default_root_dir=tmp_path / name)
        tables.append((tmp_path / name / "results.md").read_text())
    assert tables[0] == tables[1]
    assert len(list((tmp_path / "cache" / "eval").glob("*.json"))) >= 2
