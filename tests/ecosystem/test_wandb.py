"""A tiny unlearning fit logged to an offline W&B run, read back from the run file.

UnlearningModule + ForgetRetainDataModule + QuantizationSurvival + QuantizedEvaluation (on a tiny
MUSE-layout dataset, evaluated every step) with a ``WandbLogger(offline=True)``: every metric group is
on the ``trainer/global_step`` axis, the results table and the precision curves are in the run, and so
are the per-layer survival heatmap and table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import WandbLogger

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn._paths import run_directory
from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation
from lit_unlearn.loggers import STEP_METRIC, STEP_METRIC_GROUPS

from .wandb_records import read_run

MAX_STEPS = 2
FAST_EVAL = {
    "max_items": 1, "batch_size": 2, "verbmem_max_new_tokens": 2, "knowmem_max_new_tokens": 2,
    "progress": False, "auc_retrain": 0.5,
}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, tiny_model_dir, text_files, muse_dir):
    import torch
    import wandb

    saved_env = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp_path = tmp_path_factory.mktemp("wandb")
    try:
        seed_everything(0)
        logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lit-unlearn-tests")
        survival = QuantizationSurvival(every_n_steps=1, schemes=("nf4",), warn_below=float("-inf"))
        evaluation = QuantizedEvaluation(
            data=muse_dir, precisions=["full", "nf4"], every_n_steps=1, **FAST_EVAL
        )
        trainer = Trainer(
            max_steps=MAX_STEPS, logger=logger, callbacks=[survival, evaluation], accelerator="cpu",
            devices=1, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = UnlearningModule(tiny_model_dir, objective="ga_gdr", lora=LoRA(r=4, alpha=8, dropout=0.0))
        data = ForgetRetainDataModule(text_files["forget"], text_files["retain"], max_length=32, batch_size=2)
        trainer.fit(module, data)
        run_dir = Path(logger.experiment.dir).parent
        wandb.finish()
        yield read_run(run_dir), trainer
    finally:
        if wandb.run is not None:
            wandb.finish()
        torch.set_num_threads(threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def table_of(run, key):
    (row,) = run.rows_with(key)
    assert row[key]["_type"] == "table-file"
    return row, json.loads((run.files / row[key]["path"]).read_text())


def image_of(run, key):
    rows = run.rows_with(key)
    assert rows, f"no image logged under {key!r}"
    row = rows[-1]
    assert row[key]["_type"] == "images/separated"
    (filename,) = row[key]["filenames"]
    assert (run.files / filename).read_bytes()[:4] == b"\x89PNG"
    return row


def test_metric_groups_are_logged_on_the_step_axis(offline_run):
    run, trainer = offline_run
    keys = run.keys()
    expected = {
        "train/loss", "train/forget/nll", "train/retain/nll",
        "survival/nf4/changed", "survival/nf4/retained", "survival/nf4/cosine",
        "eval/full/knowmem", "eval/nf4/knowmem", "eval/nf4/verbmem", "eval/nf4/privleak",
    }
    assert expected <= keys, expected - keys

    def steps(key):
        return sorted({row[STEP_METRIC] for row in run.rows_with(key)})

    # One axis, the optimizer updates applied: both callbacks log their check after update k at k (the
    # end-of-fit evaluation too, at MAX_STEPS); the loss of the batch making update k was measured before
    # it, at k - 1.
    assert steps("survival/nf4/changed") == steps("eval/nf4/knowmem") == list(range(1, MAX_STEPS + 1))
    assert steps("train/loss") == list(range(MAX_STEPS))
    axes = {m["glob_name"]: m["step_metric"] for m in run.metrics if m["glob_name"]}
    assert all(axes.get(group) == STEP_METRIC for group in STEP_METRIC_GROUPS), axes


def test_results_table_and_precision_curves_are_in_the_run(offline_run):
    run, trainer = offline_run
    row, table = table_of(run, "eval/results")
    assert row[STEP_METRIC] == MAX_STEPS
    assert table["columns"][:2] == ["method", "precision"]
    assert {(r[0], r[1]) for r in table["data"]} == {("ga_gdr (LoRA)", "full"), ("ga_gdr (LoRA)", "nf4")}
    assert image_of(run, "eval/precision_curves")[STEP_METRIC] == MAX_STEPS
    # In the run's own directory, <save_dir>/<project>/<run id>, not in the shared save_dir.
    assert (run_directory(trainer) / "precision_curves.png").exists()
    assert run_directory(trainer).name == trainer.logger.version


def test_survival_heatmap_and_layer_table_are_in_the_run(offline_run):
    # Drawn and logged by QuantizationSurvival at fit end (lit_unlearn.plots / lit_unlearn.loggers).
    run, trainer = offline_run
    assert image_of(run, "survival/nf4/heatmap")[STEP_METRIC] == MAX_STEPS
    _, table = table_of(run, "survival/nf4/layers")
    assert {"step", "layer", "retained", "cosine", "changed"} <= set(table["columns"])
    layer = table["columns"].index("layer")
    assert any(r[layer].endswith("q_proj") for r in table["data"])


def test_each_wandb_run_gets_its_own_directory(tmp_path, tiny_model_dir, text_files, muse_dir, monkeypatch):
    # With W&B, `trainer.log_dir` is the shared save_dir: a second run used to overwrite the first's
    # results, pictures, config and adapter. Each run now writes them beside its own checkpoints.
    import wandb

    from lit_unlearn.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    eval_args = ", ".join(f"{k}: {json.dumps(v)}" for k, v in FAST_EVAL.items())
    config = tmp_path / "run.yaml"
    config.write_text(f"""trainer:
  accelerator: cpu
  max_steps: 2
  enable_progress_bar: false
  default_root_dir: {tmp_path / 'out'}
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args: {{offline: true, save_dir: {tmp_path / 'out'}, project: lit-unlearn-tests}}
  callbacks:
    - {{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{save_last: true}}}}
    - {{class_path: lit_unlearn.callbacks.QuantizationSurvival, init_args: {{every_n_steps: 1, schemes: [nf4]}}}}
    - class_path: lit_unlearn.callbacks.QuantizedEvaluation
      init_args: {{data: {muse_dir}, precisions: [full], {eval_args}}}
model: {{model_name_or_path: {tiny_model_dir}, objective: ga_gdr, lora: {{r: 4, alpha: 8, dropout: 0.0}}}}
data: {{forget: {text_files['forget']}, retain: {text_files['retain']}, max_length: 32, batch_size: 2}}
""")
    try:
        for _ in range(2):
            main(["fit", "-c", str(config)])
            wandb.finish()
    finally:
        if wandb.run is not None:
            wandb.finish()
    runs = sorted(p.parent for p in (tmp_path / "out" / "lit-unlearn-tests").glob("*/checkpoints"))
    assert len(runs) == 2
    for run in runs:
        for name in ("config.yaml", "results.md", "quantization_survival.csv", "adapter/adapter_model.safetensors",
                     "checkpoints/last.ckpt"):
            assert (run / name).is_file(), f"{name} missing in {run}"
    assert not (tmp_path / "out" / "results.md").exists() and not (tmp_path / "out" / "adapter").exists()
