"""Quantized Evaluation: the MUSE table of the model being unlearned at full precision, 8-bit and 4-bit.

The shape of Lightning's ``WeightAveraging``: swap weights in (the adapter merged, then quantized),
measure, swap the originals back, so training continues bit-identically.

The measurement is :mod:`lit_unlearn.evaluation`'s, which needs no Trainer: an
:class:`~lit_unlearn.evaluation.settings.Evaluator` under the checked
:class:`~lit_unlearn.evaluation.settings.EvaluationSettings`, and the
:class:`~lit_unlearn.evaluation.references.ReferenceRows` of the reference models with their results cache.
This callback is the Lightning side: when to evaluate, the model and tokenizer found in the module, the
table written and logged, the precision curves, checkpoints, strategies and ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from typing_extensions import override

from lit_unlearn._paths import run_directory
from lit_unlearn.adapters import is_peft_model
from lit_unlearn.deployment import Deployment, check_strategy
from lit_unlearn.evaluation import Precision, Quantizer, ResultsTable, Task
from lit_unlearn.evaluation.cache import ResultsCache
from lit_unlearn.evaluation.references import RETRAIN, ReferenceRows, check_references
from lit_unlearn.evaluation.results import scalar_name
from lit_unlearn.evaluation.settings import EvaluationSettings, Evaluator, check_positive_int
from lit_unlearn.loggers import log_image, logging_step, setup_wandb_metrics
from lit_unlearn.metrics import ConventionName, resolve_auc_retrain

__all__ = ["CURVES_IMAGE_KEY", "CURVES_NAME", "QuantizedEvaluation"]

#: File (in the output directory) and logged image key of the precision curves drawn at fit end.
CURVES_NAME = "precision_curves.png"
CURVES_IMAGE_KEY = "eval/precision_curves"

# Under a strategy that shards weights its own way (FSDP1, DeepSpeed): why, the message, and the fix for a
# fit (the evaluation is off for it) and for a test (refused).
_STRATEGY_WHY = (
    "deploys each weight as its layer runs, which it can do under FSDP2 (ModelParallelStrategy, "
    "lit_unlearn.strategies.FSDP2Strategy)"
)
_STRATEGY_REFUSAL = "{who} {why}, but {strategy} shards weights its own way. {fix}"
_FIT_FIX = (
    "It is off for this fit; train with FSDP2Strategy to evaluate during the fit, or evaluate the saved model "
    "with `lit-unlearn test`."
)
_TEST_FIX = (
    "Run `lit-unlearn test` with `--trainer.strategy lit_unlearn.strategies.FSDP2Strategy`, on one device, or "
    "with strategy='ddp', where each rank evaluates a shard of the items."
)


def _setting(name: str) -> property:
    """A read-only attribute of the callback that is its ``settings``' ``name``."""
    return property(lambda self: getattr(self.settings, name), doc=f"``settings.{name}``.")


class QuantizedEvaluation(Callback):
    """Evaluate MUSE metrics (VerbMem, KnowMem, PrivLeak, utility) of the model as it would be deployed at
    each precision, and write the results table.

    A LoRA adapter is merged before quantization (P1's protocol); see
    :func:`lit_unlearn.evaluation.evaluate`. Runs at the end of training (``on_train_end``: the last point
    where the model is still on its accelerator; ``on_fit_end`` runs after the strategy moved it to
    CPU), after the test loop (``on_test_epoch_end``, so ``lit-unlearn test -c config.yaml`` writes the
    table) and, with ``every_n_steps``, every N optimizer steps, logging ``eval/<precision>/<metric>`` so
    full-precision and 4-bit curves can be plotted side by side.

    What it writes: ``results.md``/``.csv``/``.json`` in the output directory and, to every logger, the
    numbers as ``eval/<precision>/<metric>`` (reference rows as ``eval/<name>/<precision>/<metric>``);
    a ``WandbLogger`` also gets the table as a ``wandb.Table`` under ``eval/results``, and its charts are
    put on the optimizer-step axis (:func:`lit_unlearn.loggers.setup_wandb_metrics`). When a fit has
    evaluated at two or more steps (``every_n_steps`` plus the end), the curves are drawn into
    ``precision_curves.png`` (:func:`lit_unlearn.plots.precision_curves`) and logged as the image
    ``eval/precision_curves`` where a logger takes images.

    The model is ``pl_module.evaluation_model()`` when the module defines that hook (returning the model,
    or ``(model, tokenizer)``), else ``pl_module.model`` (a Hugging Face causal LM or a peft model). The
    tokenizer is the hook's, else ``pl_module.tokenizer``, else loaded from ``tokenizer``.

    Args:
        data: MUSE-layout evaluation data: a hub id (``muse-bench/MUSE-News``), a local dataset directory,
            or ``world:data`` (the embedded toy world).
        precisions: Precisions to evaluate, from ``full``, ``int8``, ``nf4``, ``fp4``, ``int4``, or
            :class:`~lit_unlearn.deployment.Deployment` s (a scheme with its own block size).
        convention: ``muse`` (MUSE's code: 128-token VerbMem ground truth, no stemming) or
            ``open-unlearning`` (whole ground truth, stemming, AUC_retrain 0.5 by default).
        auc_retrain: AUC of the retrain model for PrivLeak: a number, ``news``/``books`` for the published
            values (0.4772 / 0.5393), or ``None``: taken from the ``retrain`` reference when there is one,
            else the convention's fallback (``muse``: PrivLeak is reported as missing).
        references: Models evaluated once as reference rows, name → path or hub id, e.g.
            ``{"target": "world:target", "retrain": "world:retrain"}``. They share the module's tokenizer.
            The full-precision AUC of a reference named ``retrain`` is AUC_retrain unless ``auc_retrain``
            is set.
        every_n_steps: Also evaluate every N optimizer steps (scalars only); ``None`` evaluates only at
            the end. Periodic results go to the loggers and into ``trainer.callback_metrics``, with
            ``eval/<precision>/knowmem_vs_retrain`` (KnowMem forget minus the ``retrain`` reference's) when
            there is a retrain reference, so ``EarlyStopping``/``ModelCheckpoint`` can act on them
            (``configs/examples/``).
        max_items: Items per evaluated set (MUSE has 100); ``None`` keeps all. Small values make periodic
            evaluation cheap.
        batch_size: Prompts or texts per forward pass.
        output_dir: Where ``results.md``/``.csv``/``.json`` go; ``None`` uses the run's own directory
            (``trainer.log_dir`` for CSV/TensorBoard loggers, ``<save_dir>/<project>/<run id>`` for W&B,
            else ``default_root_dir``).
        method: Row name of the trained model; ``None`` uses ``pl_module.hparams["objective"]`` (its
            ``method`` when it is the dict of an objective's settings, or the class name), with `` (LoRA)``
            appended for a peft model.
        tokenizer: Tokenizer path or hub id, used only when the module carries no tokenizer.
        quantizer: ``fake`` (exact simulation on any device) or ``bitsandbytes`` (CUDA: the merged model
            is reloaded with ``BitsAndBytesConfig``; no ``int4``).
        cache_references: Reuse the reference rows (and AUC_retrain) of earlier runs from the results
            cache under ``$LIT_UNLEARN_CACHE/eval``, keyed by the reference's file contents, the precision,
            the data and every evaluation setting (:mod:`lit_unlearn.evaluation.cache`).
        block_size: Block (group) size of every quantized precision; ``None`` takes each scheme's default
            (as ``QuantizationSurvival``'s ``block_size``). Only the ``fake`` quantizer takes another.
        modules: The linear layers the deployment quantizes, as ``QuantizationSurvival``'s ``modules``: a
            regex, a list of names, or ``None`` for every linear layer but the output head.
        tasks: Subset of ``verbmem_forget``, ``knowmem_forget``, ``knowmem_retain``, ``privleak``;
            ``None`` runs all.
        verbmem_max_new_tokens: Greedy tokens per VerbMem prompt; MUSE uses 128. Lower values only make
            quick curves, not numbers comparable with the papers.
        knowmem_max_new_tokens: Greedy tokens per KnowMem question; MUSE uses 32.
        progress: Show progress bars over evaluation items.

    Raises:
        ValueError: If an argument is out of range or unknown (the message names it and the valid values);
            in ``setup``, for ``quantizer="bitsandbytes"`` without CUDA, or a test run under FSDP1 or
            DeepSpeed, whose flat parameters it cannot deploy (``lit_unlearn.deployment.UnsupportedStrategyError``,
            a ``ValueError`` and a ``MisconfigurationException``); a *fit* under them only warns and turns the
            callback off. Under FSDP2 (``ModelParallelStrategy``, ``lit_unlearn.strategies.FSDP2Strategy``)
            it evaluates the sharded model: each weight deployed while its block runs, every rank scoring its
            share of the items in lockstep.
        TypeError: At evaluation, if the module holds no causal LM where the model is looked up.

    Example::

        from lightning.pytorch import Trainer
        from lit_unlearn import ForgetRetainDataModule, UnlearningModule
        from lit_unlearn.callbacks.quantized_evaluation import QuantizedEvaluation

        evaluation = QuantizedEvaluation(
            precisions=["full", "int8", "nf4"], references={"retrain": "world:retrain"}, every_n_steps=50
        )
        trainer = Trainer(max_steps=200, callbacks=[evaluation])
        trainer.fit(UnlearningModule("world:target", objective="npo_gdr"), ForgetRetainDataModule())
        # <log_dir>/results.md now holds the table; eval/nf4/verbmem etc. are logged every 50 steps,
        # and <log_dir>/precision_curves.png draws them.
    """

    def __init__(
        self,
        data: str = "world:data",
        precisions: Sequence[Precision | Deployment] = ("full", "int8", "nf4", "fp4"),
        convention: ConventionName = "muse",
        auc_retrain: float | str | None = None,
        references: Mapping[str, str] | None = None,
        every_n_steps: int | None = None,
        max_items: int | None = None,
        batch_size: int = 8,
        output_dir: str | None = None,
        method: str | None = None,
        tokenizer: str | None = None,
        quantizer: Quantizer = "fake",
        cache_references: bool = True,
        block_size: int | None = None,
        modules: str | Sequence[str] | None = None,
        tasks: Sequence[Task] | None = None,
        verbmem_max_new_tokens: int = 128,
        knowmem_max_new_tokens: int = 32,
        progress: bool = True,
    ) -> None:
        settings = EvaluationSettings.of(
            data, precisions, convention, max_items, batch_size, quantizer, block_size, modules, tasks,
            verbmem_max_new_tokens, knowmem_max_new_tokens, progress,
        )
        check_positive_int("every_n_steps", every_n_steps, optional=True)
        references = check_references(references)
        auc_retrain = resolve_auc_retrain(auc_retrain)
        if not isinstance(cache_references, bool):
            raise ValueError(f"`cache_references` must be True or False, got {cache_references!r}.")
        #: What is evaluated and how (the data, the deployments, the convention and every setting).
        self.settings = settings
        self.every_n_steps = every_n_steps
        self.output_dir = output_dir
        self.method = method
        self.tokenizer = tokenizer
        self._evaluator = Evaluator(settings)
        # Reference models do not change: their rows are reused across fits and tests (see the cache module).
        cache = ResultsCache() if cache_references else None
        self._references = ReferenceRows(self._evaluator, references, auc_retrain, cache)

        self.table = ResultsTable()
        self._last_step = -1
        self._active = True
        # One row per evaluated step of this fit: {"step": s, "eval/<precision>/<metric>": value, ...}.
        self._curve: list[dict[str, float]] = []
        # Row name of the trained model in the last table (its scalars are logged without a method).
        self._primary: str | None = None
        # (step, {precision: results}) of the latest periodic evaluation, reused when training ends on
        # that step rather than evaluating the same weights twice.
        self._step_results: tuple[int, dict[str, dict[str, float]]] | None = None

    # The constructor's arguments, as checked (read-only: they are fixed in `settings`).
    data = _setting("data")
    convention = _setting("convention")
    max_items = _setting("max_items")
    batch_size = _setting("batch_size")
    quantizer = _setting("quantizer")
    block_size = _setting("block_size")
    modules = _setting("modules")
    tasks = _setting("tasks")
    verbmem_max_new_tokens = _setting("verbmem_max_new_tokens")
    knowmem_max_new_tokens = _setting("knowmem_max_new_tokens")
    progress = _setting("progress")

    @property
    def precisions(self) -> list[str]:
        """The evaluated precisions' names, in order."""
        return self.settings.precisions

    @property
    def references(self) -> dict[str, str]:
        """The reference models, row name → path or hub id."""
        return self._references.references

    @property
    def auc_retrain(self) -> float | None:
        """The fixed AUC_retrain, or ``None`` (taken from the ``retrain`` reference or the convention)."""
        return self._references.auc_retrain

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._active = True
        if stage == "fit":
            # A new fit draws its own curve; a resumed one gets its earlier points back from the checkpoint,
            # which is restored after `setup`.
            self._curve = []
            self._step_results = None
        # One device, DDP (each rank evaluates a shard of the items) and FSDP2 are served; a fit under another
        # sharding strategy goes on without the evaluation, a test is refused.
        fit = stage == "fit"
        self._active = check_strategy(
            trainer.strategy, "QuantizedEvaluation", _STRATEGY_WHY, fix=_FIT_FIX if fit else _TEST_FIX,
            allow_fsdp2=True, refusal=_STRATEGY_REFUSAL, warn=fit,
        )
        if self.quantizer == "bitsandbytes" and not torch.cuda.is_available():
            raise ValueError(
                "`quantizer`='bitsandbytes' needs a CUDA device and none is available; use "
                "quantizer='fake', the exact simulation of the same formats."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        setup_wandb_metrics(trainer)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        setup_wandb_metrics(trainer)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._active:
            return
        # With gradient accumulation this hook runs once per micro-batch; evaluate once per optimizer step.
        if self.every_n_steps is None or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        model, tokenizer = self._model_and_tokenizer(pl_module)
        auc_retrain = self._references.resolve_auc_retrain(model, tokenizer)
        scalars = {}
        evaluated = {}
        for precision in self.precisions:
            evaluated[precision] = results = self._evaluator.evaluate(model, tokenizer, precision, auc_retrain)
            # NaN (PrivLeak without AUC_retrain) is left out rather than drawn as a gap in every curve.
            scalars.update(
                {f"eval/{precision}/{scalar_name(k)}": v for k, v in results.items() if not math.isnan(v)}
            )
        scalars.update(self._gaps_to_retrain(model, tokenizer, auc_retrain, evaluated))
        # Into `callback_metrics` too (every rank holds the same values), so EarlyStopping and ModelCheckpoint
        # can monitor them: ModelCheckpoint(every_n_train_steps=every_n_steps) right after this hook,
        # EarlyStopping at the end of the epoch.
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in scalars.items()})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=logging_step(trainer))
        self._add_curve_point(step, scalars)
        self._step_results = (step, evaluated)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        step, evaluated = self._step_results or (-1, None)
        table = self._run(trainer, pl_module, evaluated if step == trainer.global_step else None)
        self._add_curve_point(trainer.global_step, table.scalars(self._primary))
        if len(self._curve) >= 2:
            # Every rank resolves the directory (a collective under DDP); only rank zero draws.
            self._draw_curves(trainer, self._output_dir(trainer) / CURVES_NAME)

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The test loop runs under inference mode, in which weights cannot be swapped; step out of it.
        with torch.inference_mode(False):
            self.run(trainer, pl_module)

    @property
    @override
    def state_key(self) -> str:
        # What identifies the measurement: the data, the precisions with their block sizes, the quantized
        # layers, the quantizer and the convention, so two instances in one Trainer keep their own rows and
        # curves. Not the interval or the output: a resumed run that evaluates more or less often continues
        # the same curve.
        return self._generate_state_key(
            data=self.data,
            precisions=[(d.precision, d.block_size) for d in self.settings.deployments],
            modules=self.modules if self.modules is None or isinstance(self.modules, str) else list(self.modules),
            quantizer=self.quantizer,
            convention=self.convention,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        # Reference models do not change, so a resumed run need not evaluate them again; the curve keeps
        # the points of the steps before the checkpoint.
        return {**self._references.state_dict(), "curve": [dict(point) for point in self._curve]}

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written before the callback had a `state_key` holds its state under the class name
        # alone; one instance (the only one then possible) continues it.
        states = checkpoint.get("callbacks") or {}
        legacy = type(self).__qualname__
        if self.state_key not in states and legacy in states:
            if sum(isinstance(c, QuantizedEvaluation) for c in trainer.callbacks) == 1:
                self.load_state_dict(states[legacy])

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._references.load_state_dict(state_dict)
        self._curve = [dict(point) for point in state_dict.get("curve", [])]

    # ------------------------------------------------------------------ evaluation
    def run(self, trainer: Trainer, pl_module: LightningModule) -> ResultsTable:
        """Evaluate references (once) and the trained model at every precision; write and log the table."""
        return self._run(trainer, pl_module)

    def _run(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        evaluated: Mapping[str, dict[str, float]] | None = None,
    ) -> ResultsTable:
        # `evaluated`: the trained model's results per precision, already computed for these weights.
        model, tokenizer = self._model_and_tokenizer(pl_module)
        auc_retrain = self._references.resolve_auc_retrain(model, tokenizer)
        method = self._method_name(pl_module, model)
        table = ResultsTable()
        for name in self.references:
            rows = self._references.evaluate(name, model, tokenizer, auc_retrain)
            for precision in self.precisions:
                table.add(name, precision, rows[precision])
        for precision in self.precisions:
            if evaluated is not None and precision in evaluated:
                table.add(method, precision, evaluated[precision])
            else:
                table.add(method, precision, self._evaluator.evaluate(model, tokenizer, precision, auc_retrain))
        self.table = table
        self._primary = method
        # `run_directory` is a collective under DDP: every rank must ask, though only rank zero writes.
        self._write(self._output_dir(trainer), table)
        rank_zero_info(
            f"MUSE evaluation ({self.convention} convention, step "
            f"{trainer.global_step}):\n{table.to_markdown()}"
        )
        for logger in trainer.loggers:
            table.log_to(logger, step=trainer.global_step, primary=method)
        return table

    def _gaps_to_retrain(
        self,
        model: nn.Module,
        tokenizer: Any,
        auc_retrain: float | None,
        evaluated: Mapping[str, dict[str, float]],
    ) -> dict[str, float]:
        """``eval/<precision>/knowmem_vs_retrain``: the model's KnowMem on the forget set minus the retrain
        model's at the same precision (≤ 0 once MUSE's stopping rule is met), when a ``retrain`` reference
        is given. The reference is evaluated once, at the first periodic evaluation."""
        if RETRAIN not in self.references or "knowmem_forget" not in self.tasks:
            return {}
        rows = self._references.evaluate(RETRAIN, model, tokenizer, auc_retrain)
        return {
            f"eval/{p}/knowmem_vs_retrain": results["knowmem_forget"] - rows[p]["knowmem_forget"]
            for p, results in evaluated.items()
        }

    # ------------------------------------------------------------------ discovery
    def _model_and_tokenizer(self, pl_module: LightningModule) -> tuple[nn.Module, Any]:
        hook = getattr(pl_module, "evaluation_model", None)
        tokenizer = None
        if callable(hook):
            found = hook()
            model, tokenizer = found if isinstance(found, tuple) else (found, None)
            source = f"{type(pl_module).__name__}.evaluation_model()"
        else:
            model = getattr(pl_module, "model", None)
            source = f"{type(pl_module).__name__}.model"
        if not isinstance(model, nn.Module) or not callable(getattr(model, "generate", None)):
            raise TypeError(
                f"QuantizedEvaluation found {type(model).__name__} at `{source}`, not a causal LM with "
                "`generate`. Keep the Hugging Face (or peft) model in `self.model`, or define "
                "`evaluation_model()` returning it (optionally with its tokenizer as `(model, tokenizer)`)."
            )
        tokenizer = tokenizer or getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            if self.tokenizer is None:
                raise ValueError(
                    f"QuantizedEvaluation needs a tokenizer but {type(pl_module).__name__} has no "
                    "`tokenizer` attribute and the callback's `tokenizer` argument is None. Pass "
                    "`tokenizer=` (a path or hub id)."
                )
            from lit_unlearn.data.sources import resolve_path
            from lit_unlearn.gguf_io import load_tokenizer

            tokenizer = load_tokenizer(resolve_path(self.tokenizer))
            pl_module.tokenizer = tokenizer
        return model, tokenizer

    def _method_name(self, pl_module: LightningModule, model: nn.Module) -> str:
        if self.method is not None:
            return self.method
        hparams = getattr(pl_module, "hparams", {}) or {}
        objective = hparams.get("objective") if hasattr(hparams, "get") else None
        if isinstance(objective, dict):  # UnlearningModule records its ObjectiveSettings' fields
            objective = objective.get("method")
        name = str(objective) if isinstance(objective, str) else type(pl_module).__name__
        return f"{name} (LoRA)" if is_peft_model(model) else name

    def _output_dir(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return run_directory(trainer)

    @rank_zero_only
    def _write(self, directory: Path, table: ResultsTable) -> None:
        paths = table.write(directory)
        rank_zero_info(f"MUSE results written to {paths['md'].parent} (results.md, .csv, .json).")

    def _add_curve_point(self, step: int, scalars: Mapping[str, float]) -> None:
        # One point per step: when training ends on a periodic step, the table's values (the same
        # numbers, reused) replace that step's point.
        self._curve = [point for point in self._curve if point["step"] != step]
        self._curve.append({"step": step, **scalars})

    @rank_zero_only
    def _draw_curves(self, trainer: Trainer, path: Path) -> None:
        from lit_unlearn.plots import precision_curves

        precision_curves(self._curve, path)
        log_image(trainer, CURVES_IMAGE_KEY, path, step=trainer.global_step)
        rank_zero_info(f"Precision curves of {len(self._curve)} evaluations drawn to {path}.")
