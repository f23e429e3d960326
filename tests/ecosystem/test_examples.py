"""The scripts in examples/ run as written, on tiny inputs, through their `main(argv)`."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from .wandb_records import read_run

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logged_keys(metrics_csv: Path) -> set[str]:
    with open(metrics_csv, newline="") as f:
        return {key for row in csv.DictReader(f) for key, value in row.items() if value}


def test_own_lightning_module(tmp_path, capsys):
    out = load("own_lightning_module").main(["--max-steps", "4", "--every", "2", "--out", str(tmp_path)])
    survival = out["survival"]
    assert {row["step"] for row in survival.history} == {2, 4}
    # The module knows nothing of lit-unlearn, yet the functional check found `model(**batch).loss`.
    assert {entry["scheme"] for entry in survival.functional_history} == {"nf4", "fp4"}
    assert out["heatmap"].read_bytes()[:4] == b"\x89PNG"
    assert {"survival/nf4/changed", "survival/fp4/retained", "train/forget_nll"} <= logged_keys(
        out["log_dir"] / "metrics.csv"
    )
    assert "effect retained" in capsys.readouterr().out


def test_unlearn_from_python(tmp_path, tiny_model_dir, text_files, muse_dir):
    argv = [
        "--model", tiny_model_dir, "--forget", text_files["forget"], "--retain", text_files["retain"],
        "--objective", "ga_gdr", "--lora-rank", "4", "--max-steps", "2", "--batch-size", "2",
        "--max-length", "32", "--survival-every", "1", "--eval-data", muse_dir, "--eval-every", "1",
        "--eval-items", "1", "--eval-new-tokens", "2", "--log-every", "1", "--out", str(tmp_path),
    ]
    out = load("unlearn_from_python").main(argv)
    assert (out["saved"] / "adapter_model.safetensors").exists()
    assert out["module"].hparams["objective"]["method"] == "ga_gdr"
    for name in ("results.md", "quantization_survival.csv", "precision_curves.png"):
        assert (tmp_path / name).exists(), name
    keys = logged_keys(tmp_path / "metrics.csv")
    assert {"train/loss", "survival/nf4/retained", "eval/full/knowmem", "eval/nf4/verbmem"} <= keys
    assert "| ga_gdr (LoRA) | nf4 |" in (tmp_path / "results.md").read_text()


def test_unlearn_from_python_to_wandb_without_retain_or_evaluation(
    tmp_path, tiny_model_dir, text_files, wandb_offline
):
    argv = [
        "--model", tiny_model_dir, "--forget", text_files["forget"], "--retain", "none", "--objective", "npo",
        "--lora-rank", "0", "--lr", "1e-3", "--max-steps", "2", "--batch-size", "2", "--max-length", "32",
        "--survival-every", "2", "--eval-data", "none", "--log-every", "1", "--wandb", "--out", str(tmp_path),
    ]
    out = load("unlearn_from_python").main(argv)
    assert out["evaluation"] is None and out["module"].lora is None
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert {row["step"] for row in out["survival"].history} == {2}

    import wandb

    wandb.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_run(run_dir)
    assert {"survival/nf4/retained", "train/loss"} <= run.keys()
    (artifact,) = [a for a in run.artifacts if a["type"] == "model"]
    assert artifact["name"].startswith("unlearned-model-") and "model.safetensors" in artifact["files"]
