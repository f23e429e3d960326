"""configs/muse/** are what scripts/muse_configs.py writes, and say what the papers ran: the survival check
and safetensors checkpoints everywhere, FSDP2 for full-parameter rows, P1's LoRA settings and evaluator."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.conftest import load_script

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "muse_configs.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "muse_configs")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _callbacks(config: dict) -> dict[str, dict]:
    return {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}


def test_the_configs_are_what_the_script_writes(script, capsys):
    assert script.main(["--check"]) == 0, capsys.readouterr().out
    assert len(script.rows()) == len(list((ROOT / "configs" / "muse").rglob("*.yaml"))) == 26


def test_a_stale_config_is_reported(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(script, "CONFIGS", tmp_path)
    assert script.main(["--check"]) == 1, "no file written yet: every row differs"
    assert capsys.readouterr().out.count("differs: ") == 26
    assert not list(tmp_path.rglob("*.yaml")), "--check writes nothing"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "muse").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_muse_config_checks_survival_and_saves_safetensors(path):
    config = _load(path)
    callbacks = _callbacks(config)
    assert callbacks["QuantizationSurvival"]["schemes"] == ["nf4", "fp4"]
    assert callbacks["QuantizationSurvival"]["every_n_steps"] == 25
    plugins = [p["class_path"] for p in config["trainer"]["plugins"]]
    assert plugins == ["lit_unlearn.checkpoint_io.SafetensorsCheckpointIO"]
    full = config["model"]["lora"] is None
    evaluation = callbacks["QuantizedEvaluation"]
    if full:
        assert config["trainer"]["strategy"]["class_path"] == "lit_unlearn.strategies.FSDP2Strategy"
        assert config["trainer"]["devices"] == 4 and config["trainer"]["accumulate_grad_batches"] == 1
        assert evaluation["convention"] == "muse" and evaluation["auc_retrain"] == path.parent.name
        assert config["model"]["optimizer"]["init_args"]["lr"] == 1e-5
    else:
        assert "strategy" not in config["trainer"]
        assert evaluation["convention"] == "open-unlearning" and "auc_retrain" not in evaluation
    per_step = config["data"]["batch_size"] * config["trainer"]["accumulate_grad_batches"]
    assert per_step * config["trainer"]["devices"] == 16, "16 sequences of 2048 tokens per step, as the papers"
    assert path.read_text().startswith(f"# lit-unlearn fit -c configs/muse/{path.parent.name}/{path.name}\n")


# P1's selected LoRA settings, written from PAPER.md ("Selected (r / lora_alpha) per row"), not from the
# script's own table.
P1_ROWS = {("books", "ga_gdr"): (16, 16), ("books", "ga_klr"): (16, 16), ("books", "npo_gdr"): (64, 128),
           ("books", "npo_klr"): (16, 32), ("news", "ga_gdr"): (64, 64), ("news", "ga_klr"): (64, 64),
           ("news", "npo_gdr"): (16, 16), ("news", "npo_klr"): (64, 128)}


def test_p1s_lora_rows(script):
    books = _load(ROOT / "configs/muse/books/npo_gdr_lora.yaml")
    assert books["model"]["lora"]["r"] == 64 and books["model"]["lora"]["alpha"] == 128
    assert books["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(7e-4)
    assert books["trainer"]["max_epochs"] == 5 and books["model"]["objective"]["retain_weight"] == 1.0
    for (corpus, method), (r, alpha) in P1_ROWS.items():
        config = _load(ROOT / f"configs/muse/{corpus}/{method}_lora.yaml")
        assert (config["model"]["lora"]["r"], config["model"]["lora"]["alpha"]) == (r, alpha), (corpus, method)
        # P1's LoRA: dropout 0.05 on every linear projection.
        assert config["model"]["lora"]["dropout"] == pytest.approx(0.05), (corpus, method)
    assert set(script.P1_RANK) == set(P1_ROWS), "the script's table covers P1's eight LoRA rows, no more"
    news = (ROOT / "configs/muse/news/npo_klr_lora.yaml").read_text()
    assert "not recoverable from P1" in news, "an unknown setting is said to be unknown"
    qlora = _load(ROOT / "configs/muse/books/npo_gdr_qlora.yaml")
    assert qlora["model"]["four_bit"] == {"quant_type": "nf4", "compute_dtype": "bfloat16"}
    assert qlora["model"]["lora"]["r"] == 64
