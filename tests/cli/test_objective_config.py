"""The module's `objective` from YAML: a method name, or the method with its knobs (ObjectiveSettings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_unlearn import ObjectiveSettings, UnlearningModule
from lit_unlearn.cli import UnlearnCLI, main


def _config(tmp_path: Path, objective: str) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  objective: {objective}\n", encoding="utf-8")
    return config


def test_the_objective_and_its_knobs_parse_from_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "{method: npo_klr, retain_weight: 1.0, npo_beta: 0.2, klr_form: logits}")
    cli = UnlearnCLI(args=["-c", str(config)], run=False)
    want = ObjectiveSettings("npo_klr", retain_weight=1.0, npo_beta=0.2, klr_form="logits")
    assert cli.model.objective_settings == want and cli.model.method == "npo_klr"
    objective = cli.model.objective
    assert (objective.retain_weight, objective.forget.beta, objective.retain.form) == (1.0, 0.2, "logits")
    assert cli.model.model is None, "parsing a config must not load a model"
    # One knob from the command line keeps the others; a method name alone is the method with the defaults.
    cli = UnlearnCLI(args=["-c", str(config), "--model.objective.npo_beta=0.05"], run=False)
    assert cli.model.objective_settings == ObjectiveSettings("npo_klr", retain_weight=1.0, npo_beta=0.05,
                                                             klr_form="logits")
    cli = UnlearnCLI(args=["-c", str(config), "--model.objective=ga_klr"], run=False)
    assert cli.model.objective_settings == ObjectiveSettings("ga_klr")
    assert cli.model.objective.retain_weight == 100.0


def test_a_method_name_alone_is_still_an_objective(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = UnlearnCLI(args=["-c", str(_config(tmp_path, "npo"))], run=False)
    assert cli.model.objective_settings == ObjectiveSettings("npo") and cli.model.method == "npo"
    cli = UnlearnCLI(args=["--model.objective=ga_gdr"], run=False)
    assert cli.model.objective_settings == ObjectiveSettings("ga_gdr")


def test_a_knob_without_its_method_is_refused_not_defaulted(tmp_path, monkeypatch, capsys):
    # `objective: npo` then `--model.objective.npo_beta` would otherwise become npo_gdr, the default method.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(_config(tmp_path, "npo")), "--model.objective.npo_beta=0.3"])
    assert "the following arguments are required: method" in capsys.readouterr().err


def test_an_invalid_knob_in_yaml_is_one_message_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_UNLEARN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(_config(tmp_path, "{method: npo_gdr, npo_beta: -1}"))])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "lit-unlearn: error: `npo_beta` must be a finite number > 0, got -1.0; pass e.g. `npo_beta=0.1`." in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(_config(tmp_path, "{method: npo, retain_weight: 0.1}"))])
    assert exit_.value.code == 1
    assert "`retain_weight`=0.1 was given, but method 'npo' has no retain term" in capsys.readouterr().err


def test_the_module_records_the_settings_and_rebuilds_from_them():
    for objective in ("ga_gdr", ObjectiveSettings("ga_gdr", retain_weight=1.0, npo_beta=0.3),
                      {"method": "simnpo", "simnpo_delta": 1.5}):
        module = UnlearningModule("/nonexistent/model", objective=objective)
        recorded = module.hparams["objective"]
        assert recorded == {field: getattr(module.objective_settings, field) for field in recorded}
        assert UnlearningModule(**module.hparams).objective_settings == module.objective_settings
    assert UnlearningModule("/nonexistent/model").objective_settings == ObjectiveSettings("npo_gdr")


def test_a_checkpoints_objective_parses_back(tiny_model_dir, text_files, tmp_path, monkeypatch):
    # With a checkpoint's path, LightningCLI parses the hparams it records as the model's arguments.
    monkeypatch.chdir(tmp_path)
    args = [
        f"--model.model_name_or_path={tiny_model_dir}", f"--data.forget={text_files['forget']}",
        f"--data.retain={text_files['retain']}", "--data.max_length=32", "--trainer.accelerator=cpu",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ]
    main(["fit", *args, "--model.objective.method=ga_gdr", "--model.objective.retain_weight=2.0",
          "--trainer.max_steps=1"])
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    cli = UnlearnCLI(args=["test", *args, f"--ckpt_path={checkpoint}"])
    assert cli.model.objective_settings == ObjectiveSettings("ga_gdr", retain_weight=2.0)
