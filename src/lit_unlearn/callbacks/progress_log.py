"""Plain progress lines for runs without a terminal (a log file, a cluster job).

A progress bar redraws one line in place; written to a file it shows nothing until the run ends.
:class:`ProgressLog` prints a line every ``every_n_steps`` optimizer steps instead. ``lit-unlearn fit``
adds it by itself when its output is not a terminal.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["ProgressLog"]


class ProgressLog(Callback):
    """Log ``step k/N · loss … · t s`` (rank zero) every ``every_n_steps`` optimizer steps and at the last.

    Args:
        every_n_steps: Optimizer steps between lines.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive integer, got {every_n_steps!r}.")
        self.every_n_steps = every_n_steps
        self._start = 0.0
        self._last = -1

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._last = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step == self._last or not (step % self.every_n_steps == 0 or step == total):
            return
        self._last = step
        loss = trainer.callback_metrics.get("loss", trainer.callback_metrics.get("train/loss"))
        shown = f" · loss {float(loss):.4f}" if loss is not None else ""
        of = f"/{total}" if total and total > 0 else ""
        rank_zero_info(f"step {step}{of}{shown} · {time.monotonic() - self._start:.0f} s")
