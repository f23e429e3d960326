"""Logger helpers: images to W&B and TensorBoard-style loggers, tables and metric axes to W&B, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from lit_unlearn.loggers import (
    STEP_METRIC,
    STEP_METRIC_GROUPS,
    log_adapter_artifact,
    log_image,
    log_table,
    setup_wandb_metrics,
)
from lit_unlearn.plots import survival_heatmap

from .wandb_records import read_run


class Recorder:
    def __init__(self):
        self.images = []

    def add_image(self, tag, img_tensor, global_step=None, dataformats="CHW"):
        self.images.append((tag, img_tensor, global_step, dataformats))


class TensorBoardLike(Logger):
    """A logger whose ``experiment`` has TensorBoard's ``add_image`` (tensorboard is not installed here)."""

    def __init__(self):
        super().__init__()
        self._recorder = Recorder()

    @property
    def experiment(self):
        return self._recorder

    @property
    def name(self):
        return "tb"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    rows = [{"step": 1, "scheme": "nf4", "layer": "q", "retained": 0.5}]
    return survival_heatmap(rows, "nf4", tmp_path_factory.mktemp("img") / "heat.png")


def test_log_image_reaches_tensorboard_style_loggers_and_skips_others(tmp_path, png):
    tb, csv_logger = TensorBoardLike(), CSVLogger(tmp_path)
    log_image([tb, csv_logger], "survival/nf4/heatmap", png, step=7)
    ((tag, pixels, step, dataformats),) = tb.experiment.images
    assert (tag, step, dataformats) == ("survival/nf4/heatmap", 7, "HWC")
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert 0.0 <= float(np.min(pixels)) <= float(np.max(pixels)) <= 1.0
    log_image(None, "nothing", png)  # no loggers: nothing to do
    with pytest.raises(FileNotFoundError, match="missing.png"):
        log_image([tb], "k", tmp_path / "missing.png")


def test_log_table_ignores_other_loggers_and_checks_rows(tmp_path):
    log_table([CSVLogger(tmp_path)], "t", ["a"], [[1]])
    assert not any(tmp_path.rglob("*.csv")), "non-W&B loggers get no table"
    log_table([], "t", ["a", "b"], [[1]])  # no W&B logger: rows are not even looked at


def test_wandb_image_table_metrics_and_artifact_offline(tmp_path, png, wandb_offline):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lit-unlearn-tests")
    run_dir = Path(logger.experiment.dir).parent

    setup_wandb_metrics([logger])
    setup_wandb_metrics(logger)  # idempotent: the run is set up once
    log_image([logger], "survival/nf4/heatmap", png, step=3)
    rows = [{"layer": "q", "retained": 0.9, "cosine": float("nan")}, {"layer": "k", "retained": 0.1}]
    log_table([logger], "survival/nf4/layers", ["layer", "retained", "cosine"], rows, step=3)
    with pytest.raises(ValueError, match="Row 0 of `rows` has 1 values but there are 2 `columns`"):
        log_table([logger], "bad", ["a", "b"], [[1]])

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (adapter / "adapter_config.json").write_text("{}")
    log_adapter_artifact([logger], adapter, metadata={"objective": "npo_gdr", "lr": 1e-4, "path": Path("/x")})
    with pytest.raises(ValueError, match="`name`='bad name'"):
        log_adapter_artifact([logger], adapter, name="bad name")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        log_adapter_artifact([logger], adapter / "adapter_config.json")
    run_id = logger.experiment.id
    logger.experiment.finish()

    run = read_run(run_dir)
    defined = [m for m in run.metrics if m["glob_name"] in STEP_METRIC_GROUPS]
    assert sorted(m["glob_name"] for m in defined) == sorted(STEP_METRIC_GROUPS), "each group defined once"
    assert {m["step_metric"] for m in defined} == {STEP_METRIC}

    (image_row,) = run.rows_with("survival/nf4/heatmap")
    assert image_row["trainer/global_step"] == 3
    assert image_row["survival/nf4/heatmap"]["_type"] == "images/separated"
    assert len(list((run.files / "media" / "images").rglob("*.png"))) == 1

    (table_row,) = run.rows_with("survival/nf4/layers")
    table_file = run.files / table_row["survival/nf4/layers"]["path"]
    import json

    table = json.loads(table_file.read_text())
    assert table["columns"] == ["layer", "retained", "cosine"]
    assert table["data"] == [["q", 0.9, None], ["k", 0.1, None]]

    (artifact,) = [a for a in run.artifacts if a["type"] == "model"]
    assert artifact["name"] == f"unlearned-adapter-{run_id}"
    assert sorted(artifact["files"]) == ["adapter_config.json", "adapter_model.safetensors"]


def test_wandb_metrics_on_a_run_lightning_did_not_create(tmp_path, wandb_offline):
    # A run started before the logger (sweep agent, notebook): Lightning reuses it without defining axes.
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp_path), project="lit-unlearn-tests")
    with pytest.warns(UserWarning, match="already in progress"):
        logger = WandbLogger()
        assert logger.experiment is run
    setup_wandb_metrics([logger])
    run_dir = Path(run.dir).parent
    run.finish()
    metrics = read_run(run_dir).metrics
    assert {"name": STEP_METRIC, "glob_name": "", "step_metric": ""} in metrics
    assert {m["glob_name"] for m in metrics if m["step_metric"] == STEP_METRIC} == set(STEP_METRIC_GROUPS)
