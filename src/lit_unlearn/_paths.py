"""The run directory: where one fit's config, tables, pictures and adapter go, next to its checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

__all__ = ["run_directory"]


def run_directory(trainer: Trainer) -> Path:
    """This run's own directory, the parent of the ``checkpoints/`` Lightning gives it.

    CSV and TensorBoard loggers version their directory (``version_N``), and ``trainer.log_dir`` is it.
    For other loggers ``trainer.log_dir`` is the logger's shared ``save_dir``, where the next run would
    overwrite this one's files; their run directory is ``<save_dir>/<name>/<version>`` (for W&B,
    ``<save_dir>/<project>/<run id>``), exactly where ``ModelCheckpoint`` puts their checkpoints. Without
    a logger it is ``default_root_dir``. A collective under DDP: every rank must call it (rank zero's
    answer is broadcast).
    """
    path: str | None = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            path = logger.log_dir
        elif trainer.is_global_zero:
            if logger.version is None:
                _ = logger.experiment  # a W&B run gets its id when it starts
            save_dir = logger.save_dir or trainer.default_root_dir
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            path = os.path.join(save_dir, str(logger.name), version)
    else:
        path = trainer.default_root_dir
    return Path(trainer.strategy.broadcast(path))
