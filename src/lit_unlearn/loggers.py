"""Send pictures, tables and the trained adapter to whatever loggers a Trainer has.

Each helper takes a ``Trainer``, one Lightning ``Logger`` or a list of them, does what the logger
supports and quietly skips the rest, so a callback can call them unconditionally:

* :func:`log_image`: a PNG to W&B (``WandbLogger.log_image``) and to TensorBoard-style loggers
  (``experiment.add_image``). Other loggers get nothing: the PNG on disk is the artifact.
* :func:`log_table`: a ``wandb.Table`` for W&B. Other loggers get nothing, because every table
  lit-unlearn logs is also written as CSV into the log directory by the callback that made it
  (``quantization_survival.csv``, ``results.csv``); a second copy would only drift.
* :func:`setup_wandb_metrics`: puts every ``train/``, ``val/``, ``test/``, ``survival/`` and ``eval/``
  chart of a W&B run on the optimizer-step axis ``trainer/global_step``.
* :func:`log_adapter_artifact`: the saved adapter (or model) directory as a versioned W&B artifact.

wandb is imported only when a ``WandbLogger`` is present, so users of other loggers need nothing
W&B-specific. Everything runs on global rank zero only; nothing here changes weights.

Example::

    from lit_unlearn.loggers import log_image, log_table

    log_image(trainer, "survival/nf4/heatmap", "logs/survival_nf4.png", step=trainer.global_step)
    log_table(trainer.loggers, "survival/nf4/layers", ["layer", "retained"], [["q_proj", 0.93]])
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = [
    "STEP_METRIC",
    "STEP_METRIC_GROUPS",
    "log_adapter_artifact",
    "log_image",
    "log_table",
    "setup_wandb_metrics",
    "wandb_loggers",
]

#: The x-axis Lightning's ``WandbLogger`` writes with every ``log_metrics`` call (and defines as the
#: default axis of every chart when it creates the run itself).
STEP_METRIC = "trainer/global_step"
#: The metric groups :func:`setup_wandb_metrics` puts on :data:`STEP_METRIC`: the module's losses, its
#: validation and test NLLs, ``QuantizationSurvival`` and ``QuantizedEvaluation``.
STEP_METRIC_GROUPS = ("train/*", "val/*", "test/*", "survival/*", "eval/*")
# W&B's rule for artifact names.
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Runs (by id) whose metrics this process has already defined.
_DEFINED_RUNS: set[str] = set()

LoggerTarget = Trainer | Logger | Iterable[Logger] | None


def logging_step(trainer: Trainer) -> int:
    """The step every lit-unlearn value is logged and tabulated at: the optimizer updates applied when it
    was measured (``trainer.global_step``).

    One convention for every logger, table and picture: the survival check and the evaluation after
    update ``k`` are at step ``k`` in ``metrics.csv``, on W&B's ``trainer/global_step`` axis, in
    ``quantization_survival.csv``, the heatmaps and the curves, and in the checkpoint's name
    (``step=k``). Lightning's own training metrics follow it too: the loss of the batch that makes update
    ``k`` was measured before that update, so it sits at ``k - 1``.
    """
    return trainer.global_step


def _loggers(target: LoggerTarget) -> list[Logger]:
    if target is None:
        return []
    if isinstance(target, Logger):
        return [target]
    if isinstance(target, Trainer):
        return list(target.loggers)
    return list(target)


def wandb_loggers(target: LoggerTarget) -> list[WandbLogger]:
    """The ``WandbLogger`` instances among a Trainer's loggers, one logger or a list of them."""
    # The class is importable without wandb; wandb itself is imported by the logger when used.
    return [logger for logger in _loggers(target) if isinstance(logger, WandbLogger)]


@rank_zero_only
def log_image(target: LoggerTarget, key: str, path: str | os.PathLike, step: int | None = None) -> None:
    """Log the PNG at ``path`` under ``key`` to every logger that takes images.

    ``WandbLogger`` gets ``log_image(key, [path], step)``; a logger whose ``experiment`` has
    ``add_image`` (TensorBoard's ``SummaryWriter``, tensorboardX) gets the pixels as an ``HWC`` array at
    ``global_step=step``. Other loggers are skipped without a word: the file itself is the record.

    Args:
        target: A ``Trainer`` (its ``loggers``), one logger, or a list of loggers.
        key: Metric key, e.g. ``survival/nf4/heatmap``.
        path: An existing PNG file.
        step: Optimizer step the image belongs to.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path`={str(path)!r} is not a file; draw the image before logging it.")
    pixels = None
    for logger in _loggers(target):
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
            continue
        add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
        if callable(add_image):
            if pixels is None:
                import matplotlib.image

                # float32 in [0, 1], shape (H, W, 4) for a PNG with alpha; TensorBoard wants RGB.
                pixels = matplotlib.image.imread(path)[..., :3]
            add_image(key, pixels, global_step=step, dataformats="HWC")


def _cell(value: Any) -> Any:
    # Tables hold JSON: tensors and numpy scalars become Python numbers, NaN and infinities become None.
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@rank_zero_only
def log_table(
    target: LoggerTarget,
    key: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    step: int | None = None,
) -> None:
    """Log a table under ``key`` as a ``wandb.Table`` to every ``WandbLogger``; other loggers get nothing.

    Args:
        target: A ``Trainer`` (its ``loggers``), one logger, or a list of loggers.
        key: Table key, e.g. ``survival/nf4/layers``.
        columns: Column names.
        rows: One sequence of values per row, in ``columns`` order, or one mapping per row from which the
            ``columns`` are taken (missing keys become empty cells), e.g. the rows of
            ``QuantizationSurvival.history``. NaN becomes an empty cell. W&B keeps the first 10,000
            rows of a logged table (``wandb.Table.MAX_ROWS``); log a summary (e.g. the last check) rather
            than a whole long history.
        step: Optimizer step the table belongs to.

    Raises:
        ValueError: If a sequence row does not have one value per column.
    """
    targets = wandb_loggers(target)
    if not targets:
        return
    columns = list(columns)
    data = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            values = [row.get(column) for column in columns]
        else:
            values = list(row)
            if len(values) != len(columns):
                raise ValueError(
                    f"Row {i} of `rows` has {len(values)} values but there are {len(columns)} `columns` "
                    f"({columns}); give one value per column, or rows as mappings."
                )
        data.append([_cell(v) for v in values])
    for logger in targets:
        logger.log_table(key=key, columns=columns, data=data, step=step)


@rank_zero_only
def setup_wandb_metrics(target: LoggerTarget) -> None:
    """Chart the groups of :data:`STEP_METRIC_GROUPS` against optimizer steps in every W&B run.

    Lightning's ``WandbLogger`` defines ``trainer/global_step`` as the default x-axis only when it creates
    the run; a run started earlier by ``wandb.init`` (a sweep agent, a notebook) is reused as it is and
    charts everything against W&B's own call counter, on which metrics logged by different callbacks at
    the same step do not line up. This defines the axis on the run whichever way it was made. With
    ``sync_tensorboard`` the logger writes no ``trainer/global_step`` and the run is left alone.
    Idempotent: a run is set up once per process.

    Args:
        target: A ``Trainer`` (its ``loggers``), one logger, or a list of loggers. Loggers other than
            ``WandbLogger`` are ignored.
    """
    for logger in wandb_loggers(target):
        run = logger.experiment
        define = getattr(run, "define_metric", None)
        run_id = getattr(run, "id", None)
        if not callable(define) or run_id in _DEFINED_RUNS:
            continue
        if getattr(getattr(run, "settings", None), "sync_tensorboard", False):
            continue
        define(STEP_METRIC)
        for group in STEP_METRIC_GROUPS:
            define(group, step_metric=STEP_METRIC, step_sync=True)
        if run_id is not None:
            _DEFINED_RUNS.add(run_id)


@rank_zero_only
def log_adapter_artifact(
    target: LoggerTarget,
    path: str | os.PathLike,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    aliases: Sequence[str] = ("latest",),
) -> None:
    """Log the directory ``path`` (a saved adapter or model) as a W&B artifact of type ``model``.

    Every ``WandbLogger`` gets one artifact version; without a W&B logger nothing happens. Offline runs
    keep the files in the run directory and upload them with ``wandb sync``.

    Args:
        target: A ``Trainer`` (its ``loggers``), one logger, or a list of loggers.
        path: The directory ``UnlearningModule.save_pretrained`` wrote (``adapter_model.safetensors``,
            config, tokenizer).
        name: Artifact name (letters, digits, ``-``, ``_``, ``.``); ``None`` uses
            ``unlearned-<directory name>-<run id>``, distinct from the ``model-<run id>`` of Lightning's
            checkpoint artifacts.
        metadata: Shown with the artifact, e.g. the module's ``hparams``; values that are not JSON are
            stored as their ``str``.
        aliases: Aliases of the new version.

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        ValueError: If ``name`` is not a valid artifact name.
    """
    targets = wandb_loggers(target)
    if not targets:
        return
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"`path`={str(path)!r} is not a directory; pass the directory the adapter or model was saved to."
        )
    if name is not None and not _ARTIFACT_NAME.match(name):
        raise ValueError(
            f"`name`={name!r} is not a W&B artifact name: use only letters, digits, '-', '_' and '.'."
        )
    import wandb

    plain = json.loads(json.dumps(dict(metadata or {}), default=str))
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", path.resolve().name)
    for logger in targets:
        run = logger.experiment
        artifact = wandb.Artifact(name or f"unlearned-{stem}-{run.id}", type="model", metadata=plain)
        artifact.add_dir(str(path))
        run.log_artifact(artifact, aliases=list(aliases))
