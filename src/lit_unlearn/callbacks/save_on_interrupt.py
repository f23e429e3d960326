"""``SaveOnInterrupt``: Ctrl-C or SIGTERM finishes the step, saves ``last.ckpt`` and says how to resume."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

__all__ = ["SaveOnInterrupt"]


class SaveOnInterrupt(Callback):
    """Stop a fit cleanly on Ctrl-C (SIGINT) or SIGTERM: the running step ends, ``last.ckpt`` is written.

    Without it, Ctrl-C stops mid-step and the newest checkpoint is whatever ``ModelCheckpoint`` saved
    last; a cluster's SIGTERM stops at a step's end but saves nothing. With it, the first signal lets the
    current optimizer step finish, then the checkpoint is saved where that step's
    ``every_n_train_steps`` checkpoint would be, so ``--ckpt_path last`` (with the DataModule's and
    module's saved data position and RNG states) continues exactly as if nothing had happened. A second
    Ctrl-C stops at once, as usual. The run then exits: ``KeyboardInterrupt`` for SIGINT, Lightning's
    ``SIGTERMException`` for SIGTERM.

    It needs a ``ModelCheckpoint`` (it writes ``<its dirpath>/last.ckpt``); without one it only stops
    cleanly and says that nothing was saved. ``lit-unlearn fit`` adds it, with the resume command.

    Args:
        resume_command: Printed after the checkpoint's path ("Resume with: ..."); ``None`` prints none.

    Example::

        trainer = Trainer(callbacks=[ModelCheckpoint(save_last=True), SaveOnInterrupt()])
    """

    def __init__(self, resume_command: str | None = None) -> None:
        self.resume_command = resume_command
        self._requested = False  # Ctrl-C pressed, until the step ends
        self._stopped = False  # this callback raised the stop (and said so)
        self._previous: Any = None

    # ---------------------------------------------------------------- the handler
    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._requested:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._requested = True
        print("\nlit-unlearn: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._requested, self._stopped = False, False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_handler(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handler()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if self._stopped or not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        # Stopped mid-step (a second Ctrl-C, or outside the training loop): say where the last checkpoint is.
        last = [Path(cb.last_model_path) for cb in trainer.checkpoint_callbacks
                if getattr(cb, "last_model_path", "") and Path(cb.last_model_path).is_file()]
        where = f"its last checkpoint is {last[0]}" if last else "no checkpoint was saved yet"
        self._say(trainer, f"was interrupted at optimizer step {trainer.global_step}; {where}", bool(last))

    # ---------------------------------------------------------------- the stop
    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Lightning's own SIGTERM handler sets `received_sigterm` (and, under DDP, rank zero broadcasts it).
        if not trainer.strategy.reduce_boolean_decision(self._requested or trainer.received_sigterm, all=False):
            return
        checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        path = Path(checkpoints[0].dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}" \
            if checkpoints else None
        if path is not None:
            # The state an `every_n_train_steps` checkpoint of this step holds; every rank takes part.
            trainer.save_checkpoint(path)
            checkpoints[0].last_model_path = str(path)
        where = f"saved {path}" if path is not None else "no ModelCheckpoint, so nothing was saved"
        self._say(trainer, f"stopped after optimizer step {trainer.global_step}; {where}", path is not None)
        self._restore_handler()
        self._stopped = True
        raise SIGTERMException if trainer.received_sigterm else KeyboardInterrupt

    def _say(self, trainer: Trainer, what: str, resumable: bool) -> None:
        if trainer.is_global_zero:
            lines = [f"lit-unlearn: the fit {what}."]
            if resumable and self.resume_command:
                lines.append(f"Resume with: {self.resume_command}")
            print("\n".join(lines), file=sys.stderr, flush=True)
