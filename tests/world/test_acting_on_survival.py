"""The shipped configs/examples/ act on survival with Lightning's own EarlyStopping and ModelCheckpoint,
and the constructed reversion (PreserveQuantization) is called by QuantizationSurvival, end to end on
the test-size world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_unlearn.cli import UnlearnCLI

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "configs"


def _run(tmp_path: Path, monkeypatch, world_cache, config: str, edit=None, max_steps: int | None = None):
    """Fit a shipped YAML on the test-size world in ``tmp_path`` (its relative output paths land there)."""
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(world_cache))
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "test")
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load((EXAMPLES / config).read_text())
    spec["trainer"]["enable_progress_bar"] = False
    if max_steps is not None:
        spec["trainer"]["max_steps"] = max_steps
    spec["data"]["batch_size"] = 4
    if edit is not None:
        edit(spec)
    path = tmp_path / "config.in.yaml"
    path.write_text(yaml.safe_dump(spec))
    return UnlearnCLI(args=["fit", "-c", str(path)])


def _row(table, method: str, precision: str) -> dict:
    row = table.get(method, precision)
    assert row is not None, (method, precision, table.methods())
    return {k: v for k, v in row.items() if k not in ("method", "precision")}


def _callback(cli, name: str):
    (found,) = [c for c in cli.trainer.callbacks if type(c).__name__ == name]
    return found


def test_preserve_nf4_is_called_by_the_survival_check(test_world, world_cache, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match=r"only -?\d+% of the forgetting survives nf4 at step 10"):
        cli = _run(tmp_path, monkeypatch, world_cache, "preserve_nf4.yaml", max_steps=20)
    survival = _callback(cli, "QuantizationSurvival")
    nf4 = [r for r in survival.history if r["scheme"] == "nf4"]
    assert nf4 and all(r["changed"] == 0.0 for r in nf4), "not one nf4 code changed"
    measured = [r for r in survival.functional_history if r["scheme"] == "nf4" and r["effect_retained"] is not None]
    assert measured and all(r["effect_retained"] == 0.0 for r in measured)
    assert measured[0]["step"] == 10, "the first check where full-precision forgetting is measurable"
    table = _callback(cli, "QuantizedEvaluation").table
    assert _row(table, "npo_gdr", "nf4") == _row(table, "target", "nf4"), "the nf4 deployment is the target's"
    assert _row(table, "npo_gdr", "full") != _row(table, "target", "full")


def test_stop_when_erased_stops_early(test_world, world_cache, tmp_path, monkeypatch):
    cli = _run(tmp_path, monkeypatch, world_cache, "examples/stop_when_erased.yaml", max_steps=60)
    stopper = _callback(cli, "EarlyStopping")
    assert cli.trainer.should_stop and 10 <= cli.trainer.global_step < 60
    assert stopper.stopped_epoch > 0
    assert float(cli.trainer.callback_metrics["survival/nf4/effect_retained"]) < 0.5


def test_stop_at_retrain_knowmem_reads_the_quantized_gap(test_world, world_cache, tmp_path, monkeypatch):
    def threshold_always_met(spec):
        # The rule's mechanism: a threshold any first evaluation meets stops the run right after it.
        for callback in spec["trainer"]["callbacks"]:
            if callback["class_path"].endswith("EarlyStopping"):
                callback["init_args"]["stopping_threshold"] = 1000.0

    cli = _run(tmp_path, monkeypatch, world_cache, "examples/stop_at_retrain_knowmem.yaml", threshold_always_met, 60)
    gap = float(cli.trainer.callback_metrics["eval/nf4/knowmem_vs_retrain"])
    evaluation = _callback(cli, "QuantizedEvaluation")
    retrain = evaluation.state_dict()["reference_rows"]["retrain"]["nf4"]["knowmem_forget"]
    knowmem = float(cli.trainer.callback_metrics["eval/nf4/knowmem"])
    assert gap == pytest.approx(knowmem - retrain)
    assert cli.trainer.should_stop and 10 <= cli.trainer.global_step < 60


def test_best_at_4bit_keeps_and_reloads_the_best_quantized_checkpoint(test_world, world_cache, tmp_path, monkeypatch):
    def faster(spec):
        spec["model"]["optimizer"]["init_args"]["lr"] = 0.005

    cli = _run(tmp_path, monkeypatch, world_cache, "examples/best_at_4bit.yaml", faster, max_steps=30)
    checkpoint = _callback(cli, "ModelCheckpoint")
    metrics = Path(cli.trainer.logger.log_dir) / "metrics.csv"
    import csv

    # The periodic evaluations after optimizer steps 10, 20, 30, logged at those steps; the final table
    # logs step 30's numbers again at 30.
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("eval/nf4/knowmem")]
    logged = {int(r["step"]): float(r["eval/nf4/knowmem"]) for r in rows}
    assert sorted(logged) == [10, 20, 30], rows
    assert len({float(r["eval/nf4/knowmem"]) for r in rows if r["step"] == "30"}) == 1
    assert float(checkpoint.best_model_score) == pytest.approx(min(logged.values()), rel=1e-6)  # fp32 tensor
    best = Path(checkpoint.best_model_path)
    assert best.is_file() and best.name.startswith("best-nf4-step=")
    assert logged[int(best.stem.split("=")[1])] == min(logged.values()), "named after the best step"
    # The saved adapter names its base portably, and export finds it from that name.
    import json

    from lit_unlearn.export import _resolve_inputs

    adapter = Path(cli.trainer.log_dir) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "world:target"
    assert _resolve_inputs(str(adapter), None)[2] == str(test_world.target)
    # Reload it: the test run evaluates the restored weights; nf4 KnowMem is the best one's.
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(best))
    table = _callback(cli, "QuantizedEvaluation").table
    assert _row(table, "npo_gdr (LoRA)", "nf4")["knowmem_forget"] == pytest.approx(min(logged.values()))
    assert torch.isfinite(checkpoint.best_model_score)
