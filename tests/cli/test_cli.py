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


@pytest.mark.parametrize("argv", [[], ["frobnicate"]])
def test_missing_or_unknown_subcommand_lists_all_six(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for name in ("fit", "validate", "test", "predict", "prepare", "export"):
        assert name in err
    if argv:
        assert "'frobnicate'" in err


def test_user_error_inside_a_class_is_one_message(tmp_path, capsys, monkeypatch):
    config = Path(__file__).parents[2] / "configs" / "npo_gdr.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("every_n_steps: 10", "every_n_steps: 0"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_UNLEARN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(bad)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "lit-unlearn: error: `every_n_steps` must be a positive integer, got 0." in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    monkeypatch.setenv("LIT_UNLEARN_DEBUG", "1")
    with pytest.raises(Exception, match="every_n_steps"):
        main(["fit", "-c", str(bad)])


def test_help_keeps_the_command_table(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "\n  lit-unlearn prepare [--size default]" in out and "\n  lit-unlearn export --help" in out


def test_test_with_ckpt_path_last_and_no_checkpoint_is_refused(tiny_model_dir, text_files, tmp_path, capsys):
    args = [
        "test", f"--model.model_name_or_path={tiny_model_dir}", "--model.objective=ga_gdr",
        f"--data.forget={text_files['forget']}", f"--data.retain={text_files['retain']}",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last",
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "`--ckpt_path last`: no last.ckpt in" in err and str(tmp_path / "ckpt") in err
    assert not (tmp_path / "results.md").exists(), "nothing evaluated the untrained model"


def test_fit_without_a_terminal_prints_progress_lines(tiny_model_dir, text_files, tmp_path, caplog):
    import logging

    args = [
        "fit", f"--model.model_name_or_path={tiny_model_dir}", "--model.objective=ga_gdr",
        f"--data.forget={text_files['forget']}", f"--data.retain={text_files['retain']}",
        "--data.max_length=32", "--trainer.max_steps=12", "--trainer.accelerator=cpu",
        "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
    ]
    with caplog.at_level(logging.INFO):
        main(args)  # pytest's captured stderr is no terminal
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" · ")[0] for line in lines] == ["step 10/12", "step 12/12"]
    assert all(" · loss " in line and line.endswith(" s") for line in lines)


def test_progress_log_interval_is_checked():
    from lit_unlearn.callbacks import ProgressLog

    with pytest.raises(ValueError, match=r"`every_n_steps` must be a positive integer, got 0"):
        ProgressLog(0)


def test_each_fit_keeps_its_checkpoints_and_last_is_the_newest(tiny_model_dir, text_files, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"""trainer:
  accelerator: cpu
  max_steps: 2
  enable_progress_bar: false
  default_root_dir: {tmp_path / 'out'}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {tmp_path / 'out'}, name: ""}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
model: {{model_name_or_path: {tiny_model_dir}, objective: ga_gdr}}
data: {{forget: {text_files['forget']}, retain: {text_files['retain']}, max_length: 32}}
"""
    )
    main(["fit", "-c", str(config)])
    main(["fit", "-c", str(config), "--trainer.max_steps=3"])
    out = tmp_path / "out"
    assert (out / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert not list(out.rglob("last-v1.ckpt")), "no run writes into another run's directory"
    capsys.readouterr()
    from lit_unlearn.cli import UnlearnCLI

    cli = UnlearnCLI(args=["validate", "-c", str(config), "--ckpt_path", "last"])
    # The newest run's weights were restored, not the untrained ones.
    assert cli.trainer.ckpt_path == str(out / "version_1" / "checkpoints" / "last.ckpt")
    assert f"--ckpt_path last is {out / 'version_1' / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err


def test_interrupted_fit_says_where_the_checkpoint_is_and_how_to_resume(
    tiny_model_dir, text_files, tmp_path, capsys, monkeypatch
):
    from lit_unlearn import UnlearningModule

    real = UnlearningModule.training_step

    def interrupted_at_step_3(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(UnlearningModule, "training_step", interrupted_at_step_3)
    args = [
        "fit", f"--model.model_name_or_path={tiny_model_dir}", "--model.objective=ga_gdr",
        f"--data.forget={text_files['forget']}", f"--data.retain={text_files['retain']}",
        "--data.max_length=32", "--data.batch_size=2", "--trainer.max_steps=20", "--trainer.accelerator=cpu",
        "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.every_n_train_steps=2",
    ]
    with pytest.raises(SystemExit):  # Lightning exits after its graceful shutdown
        main(args)
    err = capsys.readouterr().err
    assert "the fit was interrupted at optimizer step 3; its last checkpoint is" in err
    assert "last.ckpt" in err and err.rstrip().endswith("--ckpt_path last")
    assert "Resume with: lit-unlearn fit --model.model_name_or_path=" in err
    # The printed command resumes the run.
    import shlex

    monkeypatch.undo()
    command = err.rstrip().splitlines()[-1].removeprefix("Resume with: lit-unlearn ")
    main(shlex.split(command))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
