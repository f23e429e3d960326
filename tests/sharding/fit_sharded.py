"""One unlearning fit under ``ModelParallelStrategy`` (FSDP2) or on one process, for the sharding tests.

Lightning's ModelParallelStrategy launches its processes by re-running this script (as ``ddp`` does), so
the tests run it as a command: ``python fit_sharded.py SPEC.json``. The spec names the model, data,
devices and callbacks; the result (survival history, saved paths) is written as JSON next to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation
from lit_unlearn.checkpoint_io import SafetensorsCheckpointIO
from lit_unlearn.strategies import FSDP2Strategy


class KeepProbe(Callback):
    """Keeps the survival check's probe after its last check (the callback drops it at teardown)."""

    def __init__(self, survival: QuantizationSurvival, path: str) -> None:
        self.survival, self.path = survival, path

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(self.survival._probe, self.path)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    seed_everything(0)
    torch.set_num_threads(1)
    lora = LoRA(**spec["lora"]) if spec["lora"] is not None else None
    module = UnlearningModule(spec["model"], objective=spec["objective"], lora=lora,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=spec["lr"]),
                              output_dir=spec["output_dir"])
    data = ForgetRetainDataModule(forget=spec["forget"], retain=spec["retain"], max_length=32,
                                  batch_size=spec["batch_size"], shuffle=spec.get("shuffle", False))
    survival = QuantizationSurvival(every_n_steps=2, schemes=spec["schemes"], functional=spec["functional"],
                                    log_per_layer=True)
    devices = spec["devices"]
    strategy = FSDP2Strategy() if spec["sharded"] else "auto"
    callbacks = [survival, KeepProbe(survival, spec["probe"])]
    evaluation = None
    if spec.get("evaluation"):
        evaluation = QuantizedEvaluation(**spec["evaluation"])
        callbacks.append(evaluation)
    if spec.get("checkpoints"):
        callbacks.append(ModelCheckpoint(dirpath=spec["checkpoints"], save_last=True, every_n_train_steps=1,
                                         save_top_k=-1))  # every step's file kept
    trainer = Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=spec["steps"], logger=False,
                      enable_checkpointing=bool(spec.get("checkpoints")), enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, default_root_dir=spec["root"],
                      plugins=[SafetensorsCheckpointIO()])
    trainer.fit(module, data, ckpt_path=spec.get("ckpt_path"))
    if trainer.is_global_zero:
        def kinds(model):
            return sorted({f"{type(p).__name__}" + ("" if type(p).__name__ == "DTensor" else f" {n}") for n, p in model.named_parameters()}) if model is not None else None

        result = {"history": survival.history, "functional": survival.functional_history,
                  "parameter_types": kinds(module.model), "reference_parameter_types": kinds(module.reference),
                  "table": None if evaluation is None else evaluation.table.rows,
                  "curve_steps": None if evaluation is None else sorted({p["step"] for p in evaluation._curve})}
        Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
