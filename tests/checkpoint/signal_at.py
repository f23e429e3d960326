"""A callback for the interrupt tests: the process sends itself a real signal at a given step."""

import os
import signal

from lightning.pytorch import Callback


class SignalAt(Callback):
    """Send ``$SIGNAL_NAME`` (SIGINT or SIGTERM) to this process when optimizer step ``$SIGNAL_AT_STEP``
    starts, as Ctrl-C or a cluster scheduler would; does nothing when the variables are unset."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = os.environ.get("SIGNAL_AT_STEP")
        if step is not None and trainer.global_step == int(step):
            os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL_NAME"]))
