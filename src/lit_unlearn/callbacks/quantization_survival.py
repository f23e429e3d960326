r"""
Quantization Survival
=====================

Measure, while unlearning trains, how much of the update a 4-bit deployment would keep.

4-bit post-training quantization can undo unlearning: an update far below half a quantization step
rounds back to the original codes (Zhang et al., ICLR 2025, arXiv 2410.16454). Putting the update in
LoRA adapters and merging them before quantizing makes it coarser and more likely to survive (Abitante
et al., arXiv 2602.13151). This callback watches both sides of the question: the weights (does ``ΔW``
change codes, and is what survives signal or rounding noise) and the function (does the quantized
model still forget).

The measurement is :class:`~lit_unlearn.survival.SurvivalEngine`'s, which needs no Trainer; this callback
runs one engine per fit and is the Lightning side: when to check, the probe taken from the training
batches, logging, the per-layer table and pictures, checkpoints, and ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from lit_unlearn._paths import run_directory
from lit_unlearn.callbacks._survival_probe import (
    ProbeLoss,
    heldout_probe,
    isolated_eval,
    resolve_probe_loss,
    split_probe,
    to_device,
)
from lit_unlearn.deployment import FULL, Deployment, as_deployments, check_strategy
from lit_unlearn.deployment.config import check_modules
from lit_unlearn.deployment.strategy import FSDP2_FIX
from lit_unlearn.loggers import log_image, log_table, logging_step, setup_wandb_metrics
from lit_unlearn.plots import survival_curves, survival_heatmap
from lit_unlearn.quantization import Scheme, get_scheme
from lit_unlearn.survival import HISTORY_KEYS, ProbeLosses, SurvivalEngine
from lit_unlearn.survival.history import curve_rows, latest_rows, low_survival_message, summary, write_table
from lit_unlearn.survival.layers import model_of

__all__ = ["QuantizationSurvival"]

# HISTORY_KEYS (the engine's per-layer row keys) are the columns of `history` and of the CSV table.
_LOGGED_STATS = ("changed", "below_half_step", "retained", "cosine", "rel_error")
# Per-layer rows go next to the logger's metrics; the checkpoint state under this key.
TABLE_NAME = "quantization_survival.csv"
#: Picture of the verdict over steps (effect_retained and changed per scheme), next to the table.
CURVES_NAME = "survival_curves.png"
_CHECKPOINT_KEY = "quantization_survival"


class QuantizationSurvival(Callback):
    r"""Log how much of the unlearning update survives 4-bit quantization, in weight and function space.

    Every ``every_n_steps`` optimizer steps, and once when training ends, for each scheme:

    * **weight space**, per watched linear layer and pooled over all of them: the share of weights whose
      code changes between ``Q(W0)`` and ``Q(W0 + ΔW)`` (``changed``), the share of the update under half
      a quantization step (``below_half_step``), the projection ``⟨Q(W1) − Q(W0), ΔW⟩ / ‖ΔW‖²``
      (``retained``), its ``cosine`` and ``rel_error`` (see :mod:`lit_unlearn.quantization.survival`).
      Pooling weights shares by parameter count and projections by ``‖ΔW‖²``, as if all layers were one.
    * **function space**, on a fixed probe (the first ``probe_batches`` training batches): the forget
      loss ``L`` of the current and original models, each in full precision and fake-quantized, and
      ``effect_retained = (L_q(cur) − L_q(orig)) / (L_fp(cur) − L_fp(orig))``, the share of the change of
      the forget loss that survives quantization; with retain data also ``retain_shift = L_q(cur) −
      L_fp(cur)`` on the retain probe. The quantized current model is the deployed one: LoRA merged into
      the base, then quantized. The original model's losses are taken once, when the probe is complete
      (before any optimizer step with ``probe_batches=1``). ``effect_retained`` is left out while
      ``|L_fp(cur) − L_fp(orig)|`` is under :data:`~lit_unlearn.survival.MIN_FORGET_EFFECT` (1e-3 nats):
      there the ratio would divide quantization noise by almost nothing. Every value, logged or not, is
      kept in :attr:`functional_history`.
    * **held-out function space**, when ``pl_module.quantization_probe_batches()`` or
      ``trainer.datamodule.quantization_probe_batches()`` returns a list of batches (each in the form of a
      training batch; ``ForgetRetainDataModule(heldout_forget=...)`` provides one): the same ratio on forget
      data the model is not trained on, ``effect_retained_heldout``, next to ``effect_retained``. A forget
      loss on the batch being trained on overstates what was forgotten; the held-out one says how much of
      the forgetting generalises and survives quantization. Same ``MIN_FORGET_EFFECT`` rule, so an update
      that leaves the held-out loss where it was logs nothing. The held-out batches are not checkpointed:
      they are asked for again on every fit, resume included (cheap), and their original losses are kept
      in the checkpoint.

    Logged as ``survival/<scheme>/<stat>`` to every logger (from rank zero) and into
    ``trainer.callback_metrics`` (on every rank, so ``EarlyStopping``/``ModelCheckpoint`` may monitor
    them). Per-layer rows go to :attr:`history` and to ``<run directory>/quantization_survival.csv``.

    The measurement is a :class:`~lit_unlearn.survival.SurvivalEngine` built at fit start, whose module
    docstring says where ``W0`` comes from (LoRA: the frozen base; any other trainable linear layer: a
    snapshot taken when training starts; LoRA over a bitsandbytes 4-bit base: the base decoded) and what the
    references cost in host RAM (a copy of the watched trainable weights, 1 byte per weight and scheme for
    the cached ``Q(W0)``). The snapshot is saved in checkpoints, so that a resumed run keeps measuring from
    the true original.

    Checkpoints hold everything under one key, ``checkpoint["quantization_survival"][state_key]``:
    :attr:`history`, :attr:`functional_history`, the step of the last check, the original probe losses
    (training and held-out probe), and during a fit the snapshot of ``W0`` and the probe batches.

    The probe loss is ``pl_module.quantization_probe_loss(batch) -> Tensor`` if the module defines it
    (``batch`` is one split: the ``"forget"`` or ``"retain"`` entry of a CombinedLoader dict batch, or the
    plain batch), else ``model(**batch).loss`` with ``model = pl_module.model`` if present, else
    ``pl_module`` (Hugging Face causal LMs with ``labels``). Without either the functional check is skipped
    with one info line. Probe runs use eval mode, no autograd and a forked RNG, and restore every weight,
    so training with the callback is bit-identical to training without it.

    Under DDP every rank holds the same weights and rank zero's probe is broadcast once, so all ranks
    compute the same values without any reduction; only rank zero writes to loggers and files. Under FSDP2
    the weight-space sums are reduced over the ranks (or a layer is gathered alone), and the functional
    check deploys each weight while its block runs; the logged values are a single process's on the same
    weights.

    Args:
        every_n_steps: Optimizer steps between checks. A weight-space check costs about as much as a
            training step on a few hundred tokens (``benchmarks/results/survival.md``), so checking every
            50 steps of a realistic batch adds well under 1% to a run.
        schemes: Quantization formats to check, names from :data:`lit_unlearn.quantization.SCHEMES` or
            :class:`~lit_unlearn.deployment.Deployment` s (a scheme with its own block size; YAML:
            ``{precision: int4, block_size: 64}``). The default pair are bitsandbytes' 4-bit formats of
            ``load_in_4bit``.
        block_size: Block (group) size for every scheme given by name; ``None`` takes each format's
            default (64 for nf4/fp4, as transformers' ``BitsAndBytesConfig`` uses).
        modules: Which linear layers to watch: ``None`` for every ``nn.Linear`` but the output head (what a
            4-bit deployment quantizes), a regex searched in each layer name, or a list of names, each
            matching a full name or its last components (``["q_proj", "v_proj"]``). Names are those of the
            merged model (``model.layers.0.self_attn.q_proj``). The functional check quantizes the same
            layers.
        probe_batches: Number of leading training batches kept as the functional probe.
        functional: Run the functional check (a few forward passes per check).
        warn_below: Warn (rank zero) when ``effect_retained`` falls below this; ``float("-inf")`` never warns.
        log_per_layer: Keep per-layer rows in :attr:`history` and write them to the CSV table. ``False``
            logs only the pooled scalars.

    Raises:
        ValueError: If an argument is out of range or an unknown scheme is named (the message lists the
            valid ones); at fit start, if ``modules`` selects no trainable or adapted linear layer.
        lit_unlearn.deployment.UnsupportedStrategyError: Under FSDP1 or DeepSpeed, whose flat parameters are
            not the model's (a ``MisconfigurationException``). FSDP2 (``ModelParallelStrategy``,
            ``lit_unlearn.strategies.FSDP2Strategy``) is served: each rank measures its own rows where they
            are whole quantization blocks and the sums are reduced, any other layer is gathered alone.

    Example::

        from lightning.pytorch import Trainer
        from lit_unlearn import ForgetRetainDataModule, UnlearningModule
        from lit_unlearn.callbacks import QuantizationSurvival

        survival = QuantizationSurvival(every_n_steps=25, schemes=("nf4",))
        trainer = Trainer(callbacks=[survival], max_steps=100)
        trainer.fit(UnlearningModule("world:target", objective="npo_gdr"), ForgetRetainDataModule())
        survival.layer_table  # one dict per layer of the last check: changed, retained, cosine, …
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        schemes: Sequence[str | Deployment] = ("nf4", "fp4"),
        block_size: int | None = None,
        modules: str | Sequence[str] | None = None,
        probe_batches: int = 1,
        functional: bool = True,
        warn_below: float = 0.5,
        log_per_layer: bool = True,
    ) -> None:
        _check_positive_int("every_n_steps", every_n_steps)
        _check_positive_int("probe_batches", probe_batches)
        check_modules(modules)
        # The one door: names, "name:block" and Deployments, each validated once (block sizes included).
        deployments = as_deployments(schemes, block_size, modules, each="schemes", refuse={FULL: _NOT_A_SCHEME})
        if isinstance(warn_below, bool) or not isinstance(warn_below, (int, float)) or math.isnan(warn_below):
            raise ValueError(
                f"`warn_below` must be a number (a share such as 0.5, or -inf to never warn), "
                f"got {warn_below!r}."
            )
        for flag, value in (("functional", functional), ("log_per_layer", log_per_layer)):
            if not isinstance(value, bool):
                raise ValueError(f"`{flag}` must be True or False, got {value!r}.")

        self.every_n_steps = every_n_steps
        # The user's schemes: what `state_key` is made of, so checkpoints restore whatever is detected.
        self._requested: tuple[Scheme, ...] = tuple(d.scheme for d in deployments)
        self.modules = modules
        self.probe_batches = probe_batches
        self.functional = functional
        self.warn_below = float(warn_below)
        self.log_per_layer = log_per_layer

        #: One plain dict per layer, scheme and check, keyed by :data:`HISTORY_KEYS`.
        self.history: list[dict[str, Any]] = []
        #: One plain dict per scheme and check: the probe losses and the derived functional metrics.
        self.functional_history: list[dict[str, Any]] = []
        self._last_step = -1
        # Probe losses of the original model: "fp" and one entry per scheme, each {split: loss}.
        self._original_losses: ProbeLosses | None = None
        # The same for the held-out probe (None without one).
        self._original_heldout: ProbeLosses | None = None
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        # The measurement of this fit: built at fit start, dropped at teardown (its snapshot and cached codes).
        self._engine: SurvivalEngine | None = None
        self._probe: list[dict[str, Any]] = []
        self._probe_ready = False
        # The held-out probe, rebuilt from the data on every fit rather than checkpointed.
        self._heldout: list[dict[str, Any]] | None = None
        self._heldout_taken = False
        self._probe_loss: ProbeLoss | None = None
        self._probe_loss_resolved = False
        self._restored: dict[str, Any] = {}
        self._table_path: str | None = None
        self._table_started = False
        self._warned: set[str] = set()

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """The watched schemes: the requested ones, plus during a fit the format the base weights sit on
        (see ``on_train_start``)."""
        return self._requested if self._engine is None else self._engine.schemes

    @property
    @override
    def state_key(self) -> str:
        # What identifies the measurement: the schemes (with their block sizes) and the watched layers.
        # Not the interval: a resumed run that checks more or less often continues the same history.
        return self._generate_state_key(
            schemes=[(s.name, s.block_size) for s in self._requested], modules=_modules_key(self.modules),
        )

    def curve_rows(self) -> list[dict[str, Any]]:
        """One row per check, as the loggers got it: ``step`` (optimizer updates applied, see
        ``loggers.logging_step``), the verdict ``survival/<scheme>/effect_retained`` and the pooled ``changed``."""
        return curve_rows(self.history, self.functional_history)

    @property
    def layer_table(self) -> list[dict[str, Any]]:
        """The rows of :attr:`history` from the latest check: one per watched layer and scheme."""
        return latest_rows(self.history)

    # ------------------------------------------------------------------ Trainer hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy, "QuantizationSurvival", "reads weights as DDP or FSDP2 holds them",
                           fix=FSDP2_FIX, allow_fsdp2=True)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After `configure_model`, so modules that build their network lazily have it by now.
        self._engine = SurvivalEngine(model_of(pl_module), self._requested, self.modules)
        setup_wandb_metrics(trainer)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After checkpoint restoration: the weights here are the ones this fit starts from.
        engine = self._engine
        saved = self._restored.get("snapshot", {})
        if self.history and any(name not in saved for name in engine.snapshot_layers):
            rank_zero_warn(
                "QuantizationSurvival: this run continues a previous one, but the checkpoint holds no "
                "snapshot of the original weights, so ΔW is measured from the weights this fit starts with."
            )
        self._watch_base_format(trainer, saved)
        engine.prepare(saved)
        lines = engine.layer_formats()
        if lines:
            rank_zero_info("QuantizationSurvival: layer formats: " + "; ".join(lines) + ".")
        sharding = engine.sharding()
        if sharding is not None:
            rank_zero_info(f"QuantizationSurvival under {sharding}.")
        if "probe" in self._restored:
            self._probe, self._probe_ready = self._restored["probe"], True
        else:
            # A new probe gets new original losses.
            self._original_losses = None
        self._restored = {}
        # `run_directory` is a collective under DDP: every rank asks, only rank zero writes.
        self._table_path = os.path.join(run_directory(trainer), TABLE_NAME)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.functional and not self._probe_ready:
            # A host copy: the training step may modify the batch in place and need not stay on the device.
            self._probe.append(to_device(split_probe(batch), "cpu"))
            if len(self._probe) == self.probe_batches:
                self._finish_probe(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end on the same optimizer step; check once.
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._check(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._engine is not None and trainer.global_step > 0 and trainer.global_step != self._last_step:
            self._check(trainer, pl_module)
        self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: Trainer) -> None:
        # One heatmap per scheme next to the CSV table (layers x steps, colour = retained share of the
        # update), logged as an image; the last check's per-layer rows as a table where the logger has one.
        if not self.history or self._table_path is None:
            return
        step = logging_step(trainer)
        curves = self.curve_rows()
        if curves:
            path = os.path.join(os.path.dirname(self._table_path), CURVES_NAME)
            log_image(trainer, "survival/curves", survival_curves({"this run": curves}, path), step=step)
        for scheme in (s.name for s in self.schemes):
            path = os.path.join(os.path.dirname(self._table_path), f"survival_{scheme}.png")
            log_image(trainer, f"survival/{scheme}/heatmap", survival_heatmap(self.history, scheme, path), step=step)
            rows = [r for r in self.layer_table if r["scheme"] == scheme]
            log_table(trainer, f"survival/{scheme}/layers", HISTORY_KEYS, rows, step=step)
        last_step = self.history[-1]["step"] if self.history else self._last_step
        rank_zero_info(summary(curves, [s.name for s in self.schemes], last_step, self._table_path, CURVES_NAME))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            # Releases the engine (the snapshot and the cached codes); `history` stays.
            self._reset_fit_state()

    def _watch_base_format(self, trainer: Trainer, saved: dict[str, torch.Tensor]) -> None:
        """Watch the format the watched weights' ``W0`` already sits on, if any (one info line).

        A model loaded from a GGUF or 4-bit file and cast to float is exactly on that format's grid, and
        re-quantizing it to that format is where an update under half a step rounds back to the original
        codes; it is also the format such a model is most likely deployed in, so it is watched rather than
        only mentioned (a warning is what users miss).
        """
        engine = self._engine
        # W0 as `engine.prepare` will take it: the checkpoint's snapshot where it has one. Rank zero's answer
        # is everyone's (under FSDP2 each rank reads its own rows), so all ranks watch the same.
        found = trainer.strategy.broadcast(engine.base_format(saved))
        if found is None:
            return
        names = {s.name for s in engine.schemes}
        action = f"{found} is watched" if found in names else f"watching {found} too"
        watched = len(engine.watched)
        rank_zero_info(
            f"QuantizationSurvival: the watched weights sit on the {found} grid ({watched} layers): "
            f"re-quantizing to {found} gives back updates under half a step; {action}."
        )
        if found not in names:
            engine.add_scheme(get_scheme(found))

    # ------------------------------------------------------------------ checkpointing
    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # One entry per measurement (`state_key`): the history and original losses as plain Python, and during
        # a fit the snapshot (one copy of the watched trainable weights; LoRA runs store none) and the probe.
        saved: dict[str, Any] = {
            "history": [dict(row) for row in self.history],
            "functional_history": [dict(row) for row in self.functional_history],
            "last_step": self._last_step,
            "original_losses": _copy_losses(self._original_losses),
            "original_losses_heldout": _copy_losses(self._original_heldout),
        }
        # Every rank builds the checkpoint: a sharded snapshot is gathered here, one layer at a time.
        snapshot = {} if self._engine is None else self._engine.snapshot()
        if snapshot:
            saved["snapshot"] = snapshot
        # The held-out probe is not saved: the hook rebuilds it from the data on resume.
        if self._probe_ready:
            saved["probe"] = self._probe
        checkpoint.setdefault(_CHECKPOINT_KEY, {})[self.state_key] = saved

    @override
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get(_CHECKPOINT_KEY, {})
        state = saved.get(self.state_key)
        self._restored = {}
        if state is None:
            others = [key for key in saved if key.startswith(type(self).__qualname__)]
            if others:
                rank_zero_warn(
                    f"QuantizationSurvival: the checkpoint was written by a survival check of other schemes or "
                    f"layers ({others[0]}), so this one ({self.state_key}) starts a new history and takes W0 from "
                    "the weights the resumed fit starts with. Resume with the same `schemes`, `block_size` and "
                    "`modules` to continue it."
                )
            return
        self.history = [dict(row) for row in state.get("history", [])]
        self.functional_history = [dict(row) for row in state.get("functional_history", [])]
        self._last_step = int(state.get("last_step", -1))
        self._original_losses = _copy_losses(state.get("original_losses"))
        self._original_heldout = _copy_losses(state.get("original_losses_heldout"))
        # The tensors wait for `on_train_start`, where the engine takes its references.
        self._restored = {key: state[key] for key in ("snapshot", "probe") if key in state}

    # ------------------------------------------------------------------ the check
    def _finish_probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Rank zero's probe for everyone: with the weights replicated, every rank then computes the same
        # losses, and a checkpoint (written by rank zero) holds the probe that all ranks used.
        self._probe = trainer.strategy.broadcast(self._probe, src=0)
        self._probe_ready = True
        # Before this batch's optimizer step. With one probe batch (the default) no step has been taken,
        # so this is the original model exactly, embeddings and norms included; with more, the watched
        # layers are put back to W0 and the other parameters are those of step `probe_batches - 1`.
        self._original_losses = self._probe_losses(pl_module, original=True)
        self._take_heldout(trainer, pl_module, fresh=True)

    def _take_heldout(self, trainer: Trainer, pl_module: LightningModule, fresh: bool) -> None:
        """Ask for the held-out probe once per fit, and take its original losses with a fresh training probe
        (the same model state as :meth:`_finish_probe`) or when a resumed run's checkpoint has none."""
        if not self._heldout_taken:
            self._heldout_taken = True
            batches = heldout_probe(pl_module, getattr(trainer, "datamodule", None))
            self._heldout = trainer.strategy.broadcast(batches, src=0)
        if self._heldout is None:
            self._original_heldout = None
            return
        if fresh or self._original_heldout is None:
            if not fresh:
                rank_zero_info(
                    "QuantizationSurvival: the checkpoint holds no original losses of the held-out probe; they are "
                    "taken now, with the watched layers at their original weights and the others as they are."
                )
            self._original_heldout = self._probe_losses(pl_module, original=True, probe=self._heldout)

    def _check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        rows, metrics = self._weight_space(step)
        if self.functional:
            if not self._probe_ready and self._probe:
                self._finish_probe(trainer, pl_module)
            if self._probe_ready:
                self._take_heldout(trainer, pl_module, fresh=False)
                metrics.update(self._function_space(pl_module, step, rows))
        self._log(trainer, metrics)
        if self.log_per_layer:
            self.history.extend(rows)
            self._write_table(rows)

    def _weight_space(self, step: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The engine's per-layer rows and the pooled metrics to log."""
        check = self._engine.weight_check()
        metrics = {
            f"survival/{scheme}/{key}": float(getattr(pooled, key))
            for scheme, pooled in check.pooled.items() for key in _LOGGED_STATS
        }
        return check.rows(step), metrics

    def _probe_losses(
        self, pl_module: LightningModule, original: bool, probe: list[dict[str, Any]] | None = None
    ) -> ProbeLosses | None:
        """Losses ``{"fp": {split: loss}, <scheme>: {split: loss}}`` of the original or current model on
        ``probe`` (the training probe by default).

        ``None`` when the module has no probe loss (said once, in an info line).
        """
        losses = self._losses_of(pl_module, original, [self._probe if probe is None else probe])
        return None if losses is None else losses[0]

    def _losses_of(
        self, pl_module: LightningModule, original: bool, probes: list[list[dict[str, Any]]]
    ) -> list[ProbeLosses] | None:
        """:meth:`_probe_losses` of several probes, one list entry per probe (:meth:`SurvivalEngine.probe`),
        with the probe loss resolved on the first call."""
        if self._probe_loss_resolved and self._probe_loss is None:
            return None
        probes = [[to_device(batch, pl_module.device) for batch in probe] for probe in probes]
        # The whole module in eval mode, its hooks included, and the probe loss resolved in the same isolation.
        with isolated_eval(pl_module):
            if not self._probe_loss_resolved:
                self._probe_loss = resolve_probe_loss(pl_module, self._engine.model, probes[0][0]["forget"])
                self._probe_loss_resolved = True
                if self._probe_loss is None:
                    return None
            return self._engine.probe(self._probe_loss, probes, original=original)

    def _function_space(
        self, pl_module: LightningModule, step: int, rows: list[dict[str, Any]]
    ) -> dict[str, float]:
        original, heldout_original = self._original_losses, self._original_heldout
        with_heldout = self._heldout is not None and heldout_original is not None
        probes = [self._probe, self._heldout] if with_heldout else [self._probe]
        found = self._losses_of(pl_module, original=False, probes=probes)
        if found is None or original is None:
            return {}
        current, heldout = found[0], found[1] if with_heldout else None
        metrics = {}
        for row in self._engine.functional_rows(step, current, original, heldout, heldout_original):
            name, effect, shift = row["scheme"], row["effect_retained"], row["retain_shift"]
            if effect is not None:
                metrics[f"survival/{name}/effect_retained"] = effect
                self._maybe_warn(name, step, effect, rows)
            if shift is not None:
                metrics[f"survival/{name}/retain_shift"] = shift
            if row.get("effect_retained_heldout") is not None:
                metrics[f"survival/{name}/effect_retained_heldout"] = row["effect_retained_heldout"]
            self.functional_history.append(row)
        return metrics

    # ------------------------------------------------------------------ reporting
    def _maybe_warn(self, scheme: str, step: int, effect: float, rows: list[dict[str, Any]]) -> None:
        # Once per fall below the threshold, not at every check while it stays there.
        if effect >= self.warn_below:
            self._warned.discard(scheme)
            return
        if scheme in self._warned:
            return
        self._warned.add(scheme)
        rank_zero_warn(low_survival_message(scheme, step, effect, rows))

    def _log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Every rank computed the same values, so none is reduced: every rank's `callback_metrics` hold
        # them (monitors agree across ranks) and rank zero alone writes them to the loggers.
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in metrics.items()})
        _log_metrics(trainer.loggers, metrics, logging_step(trainer))

    @rank_zero_only
    def _write_table(self, rows: list[dict[str, Any]]) -> None:
        if self._table_path is None:
            return
        # The first write of a fit rewrites the file from the whole history, which on resume holds the
        # rows of earlier fits; later writes append only the new rows.
        fresh = not self._table_started
        write_table(self._table_path, self.history if fresh else rows, fresh)
        self._table_started = True


_NOT_A_SCHEME = ("the check measures what a quantization scheme keeps of the update; name schemes such as 'nf4' "
                 "(full precision is what it compares them with).")


@rank_zero_only
def _log_metrics(loggers: list[Logger], metrics: dict[str, float], step: int) -> None:
    if not metrics:
        return
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def _copy_losses(losses: ProbeLosses | None) -> ProbeLosses | None:
    return None if losses is None else {state: dict(values) for state, values in losses.items()}


def _modules_key(modules: object) -> object:
    # A state key must not hold a function's address, which changes between processes.
    if callable(modules):
        return f"{getattr(modules, '__module__', '')}.{getattr(modules, '__qualname__', type(modules).__name__)}"
    return modules


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
