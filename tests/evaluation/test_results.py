import csv
import json
import math

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_unlearn.evaluation import ResultsTable

ROW = {
    "verbmem_forget": 12.345,
    "knowmem_forget": 20.0,
    "knowmem_retain": 44.8,
    "privleak": -25.68,
    "auc": 0.3547,
}


@pytest.fixture()
def table():
    t = ResultsTable()
    t.add("target", "full", ROW)
    t.add("npo_gdr (LoRA)", "full", {**ROW, "verbmem_forget": 1.0})
    t.add("npo_gdr (LoRA)", "nf4", {**ROW, "privleak": math.nan})
    return t


def test_rows_are_method_by_precision_and_replaced_on_re_add(table):
    table.add("npo_gdr (LoRA)", "nf4", {**ROW, "privleak": -5.86})
    assert [(r["method"], r["precision"]) for r in table.rows] == [
        ("target", "full"),
        ("npo_gdr (LoRA)", "full"),
        ("npo_gdr (LoRA)", "nf4"),
    ]
    assert table.get("npo_gdr (LoRA)", "nf4")["privleak"] == -5.86
    assert table.methods == ["target", "npo_gdr (LoRA)"]


def test_markdown_has_the_paper_layout(table):
    lines = table.to_markdown().splitlines()
    assert lines[0] == "| Method | Precision | VerbMem ↓ | KnowMem ↓ | PrivLeak →0 | Utility ↑ |"
    assert lines[2] == "| target | full | 12.35 | 20.00 | -25.68 | 44.80 |"
    assert lines[4] == "| npo_gdr (LoRA) | nf4 | 12.35 | 20.00 | – | 44.80 |"  # NaN shows as missing


def test_files_are_written(table, tmp_path):
    paths = table.write(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["results.csv", "results.json", "results.md"]
    assert paths["md"].read_text(encoding="utf-8").strip() == table.to_markdown()
    records = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert records[0] == {
        "method": "target",
        "precision": "full",
        "verbmem": 12.345,
        "knowmem": 20.0,
        "privleak": -25.68,
        "utility": 44.8,
        "auc": 0.3547,
    }
    assert records[2]["privleak"] is None
    with paths["csv"].open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert (
        rows[1]["method"] == "npo_gdr (LoRA)"
        and float(rows[1]["verbmem"]) == 1.0
        and rows[2]["privleak"] == ""
    )


def test_scalars_prefix_other_methods(table):
    scalars = table.scalars(primary="npo_gdr (LoRA)")
    assert scalars["eval/nf4/verbmem"] == 12.345 and scalars["eval/full/utility"] == 44.8
    assert scalars["eval/target/full/privleak"] == -25.68
    assert "eval/nf4/privleak" not in scalars  # NaN is left out


def test_log_to_csv_logger_writes_scalars(table, tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    table.log_to(logger, step=3, primary="npo_gdr (LoRA)")
    logger.save()
    with open(logger.experiment.metrics_file_path, encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert float(row["eval/nf4/utility"]) == 44.8 and row["step"] == "3"


def test_log_to_wandb_logger_sends_a_table(table, tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    calls = {}
    # Record instead of starting a wandb run: the table payload is what matters here.
    logger.log_table = lambda **kwargs: calls.setdefault("table", kwargs)
    logger.log_metrics = lambda metrics, step=None: calls.setdefault("metrics", metrics)
    table.log_to(logger, step=5, primary="npo_gdr (LoRA)")
    sent = calls["table"]
    assert sent["key"] == "eval/results" and sent["step"] == 5
    assert sent["columns"] == ["method", "precision", "verbmem", "knowmem", "privleak", "utility", "auc"]
    assert sent["data"][0] == ["target", "full", 12.345, 20.0, -25.68, 44.8, 0.3547]
    assert calls["metrics"]["eval/full/verbmem"] == 1.0


@pytest.mark.slow
def test_log_to_a_real_offline_wandb_run_writes_the_table(table, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lit-unlearn-tests")
    table.log_to(logger, step=1, primary="npo_gdr (LoRA)")
    logger.experiment.finish()
    files = list(tmp_path.glob("wandb/offline-run-*/files/media/table/eval/results_*.table.json"))
    assert len(files) == 1
    logged = json.loads(files[0].read_text(encoding="utf-8"))
    assert logged["columns"][:2] == ["method", "precision"] and len(logged["data"]) == 3
