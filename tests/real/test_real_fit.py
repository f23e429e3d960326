"""A short fit of the real model from its shipped config: the check names the base's format and sees the
reversion at its first check (SmolLM2's decoder sits on the Q4_1 grid; updates under half a step round back),
and MagnitudeFloor, the remedy the config ships, pushes enough of the update across Q4_1's cells to keep it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from lit_unlearn.cli import UnlearnCLI

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).parents[2] / "configs" / "real" / "survive_q4_1.yaml"


def test_shipped_config_detects_q4_1_sees_the_reversion_and_floors_it(tmp_path, caplog):
    torch.set_num_threads(1)
    args = [
        "-c", str(CONFIG),
        "--trainer.max_steps=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        # The papers' LoRA learning rate x 10, so that the forget loss has moved measurably after 3 steps.
        "--model.optimizer.init_args.lr=0.001",
    ]
    cli = UnlearnCLI(args=args, run=False)
    from lit_unlearn.callbacks import MagnitudeFloor, QuantizationSurvival

    (survival,) = [c for c in cli.trainer.callbacks if isinstance(c, QuantizationSurvival)]
    survival.every_n_steps = 3  # the config checks every 10 steps; one check, at the end of this short fit
    (floor,) = [c for c in cli.trainer.callbacks if isinstance(c, MagnitudeFloor)]
    floor.shares, floor.probe_batches = (0.01,), 2  # one try on a short probe: CI time
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.trainer.fit(cli.model, cli.datamodule)
    said = caplog.text
    assert "sit on the q4_1 grid" in said and "watching q4_1 too" in said, said[-2000:]
    metrics = cli.trainer.callback_metrics
    # Weight space: the update flips almost no Q4_1 code, every part of it under half a step.
    assert float(metrics["survival/q4_1/changed"]) < 1e-3
    assert float(metrics["survival/q4_1/below_half_step"]) > 0.999
    # Function space: the Q4_1 deployment keeps almost none of the change of the forget loss; int8 keeps it.
    q4_1 = float(metrics["survival/q4_1/effect_retained"])
    assert q4_1 < 0.3, q4_1
    assert float(metrics["survival/int8/effect_retained"]) > 0.7
    assert any("survives q4_1" in str(w.message) for w in caught), (
        "the low-survival warning fires at the first check"
    )
    print({k: round(float(v), 4) for k, v in metrics.items() if k.startswith("survival/")})
    # The remedy, and its guard firing on a real model. As trained, Q4_1 keeps little of the probe's forgetting.
    # Three steps have barely aimed the update: pushing the 1% nearest their cell edge keeps the forgetting
    # several times over but wrecks the retain loss, so the floor refuses it and saves nothing (the 30-step
    # runs of docs/real_model.md are where it is taken).
    plan = floor.plan
    assert plan is not None and plan.deployment.precision == "q4_1" and plan.trials[0].effect_retained < 0.3
    (plain, pushed) = plan.trials
    assert pushed.effect_retained > 1.0 and pushed.retain - max(plan.full["retain"], plan.original_deployed["retain"]) > 1.0
    assert not plan.met and floor.saved_to is None and not (tmp_path / "floored-q4_1").exists()
    assert any("the pushed model is not saved" in str(w.message) for w in caught)
    print(plan.summary())
