"""The `lit-unlearn` command: every shipped YAML parses and instantiates; fit runs twice into one directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_unlearn.cli import UnlearnCLI, main

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    names = {p.stem for p in CONFIGS if p.parent.name == "configs"}
    assert {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo"} <= names
    full = {p.stem for p in CONFIGS if p.parent.name == "full"}
    assert {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo"} <= full


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_loads_through_the_cli(config, tmp_path, monkeypatch):
    assert config.read_text().startswith("# lit-unlearn "), "each config opens with the command that runs it"
    monkeypatch.chdir(tmp_path)
    cli = UnlearnCLI(args=["-c", str(config)], run=False)
    if config.parent.name in ("configs", "full", "news", "books") and config.stem != "preserve_nf4":
        assert cli.model.method in config.stem or config.stem.startswith(cli.model.method)
    assert cli.model.model is None, "parsing a config must not load a model"


def test_fit_twice_into_the_same_directory(tiny_model_dir, text_files, tmp_path):
    args = [
        "fit",
        f"--model.model_name_or_path={tiny_model_dir}",
        "--model.objective=ga_gdr",
        f"--data.forget={text_files['forget']}",
        f"--data.retain={text_files['retain']}",
        "--data.max_length=32",
        "--trainer.max_steps=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    main(args)
    main(args)  # a rerun must not die on the config.yaml the first run saved
    assert (tmp_path / "config.yaml").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_unknown_objective_is_rejected_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.objective=npo_kl", f"--trainer.default_root_dir={tmp_path}"])
    assert "npo_gdr" in capsys.readouterr().err
