r"""
Magnitude Floor
===============

What to do when the survival check says the forgetting will not survive the format you ship: at the end of
the fit, push the updates that came closest to crossing a cell edge across it, just enough of them for the
deployed model to keep the forgetting, measured on the training probe, and save that model for export.

Lightning glue over :func:`lit_unlearn.deployment.floor.calibrate_floor`: the probe is the first
``probe_batches`` training batches, its losses the module's ``quantization_probe_loss`` (or the model's own
loss), ``W0`` the base (LoRA) or a snapshot taken when training starts (saved in checkpoints).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_unlearn._atomic import atomic_directory, atomic_write_text
from lit_unlearn._paths import run_directory
from lit_unlearn.adapters import is_peft_model
from lit_unlearn.callbacks._survival_probe import resolve_probe_loss, to_device
from lit_unlearn.deployment import DeployedLayer, Deployment, check_strategy, deployed_layers, merged_state_dict
from lit_unlearn.deployment.floor import (
    DEFAULT_SHARES,
    FloorPlan,
    calibrate_floor,
    check_floor_deployment,
    check_floor_settings,
)
from lit_unlearn.gguf_io import gguf_base_of
from lit_unlearn.quantization import detect_format
from lit_unlearn.survival.layers import model_of
from lit_unlearn.survival.probe import isolated_eval, split_probe

__all__ = ["MagnitudeFloor"]

_CHECKPOINT_KEY = "magnitude_floor"


class MagnitudeFloor(Callback):
    """At fit end, find the smallest share of pushed weights that keeps the forgetting at ``deployment``, and
    save the model with them (``<run dir>/floored-<format>/``, a full model in safetensors with the tokenizer,
    ready for ``lit-unlearn export``), with ``floor.json`` (every share tried and its probe losses).

    Re-quantizing to a grid the base already sits on (a GGUF file's own format) rounds back every update
    smaller than half a step; at the papers' learning rates that is nearly all of them, and the deployed
    file remembers. This callback calibrates, per run, a sparse magnitude floor
    (:mod:`lit_unlearn.deployment.floor`): share 0 (the plain update) first, then each of ``shares`` until
    the probe's ``effect_retained`` at the deployment reaches ``target``. When the plain update already
    survives nothing is saved; when no share reaches the target within ``retain_tolerance`` a warning says
    so and nothing is saved. The run's own adapter or model is saved as always, untouched.

    The target is a share of the probe's *loss* rise, and how much of it a run's answers need differs by run:
    on SmolLM2 at Q4_1, 0.7 kept all of LoRA NPO+GDR's forgetting (three seeds) and wrecked a full-parameter
    run's model, and a run whose training texts' mean loss does not rise (GA+GDR with a heavy retain weight,
    SimNPO) gets no push (docs/real_model.md). The retain guard reads the training retain batches, which the
    pushes tend to improve. Score the saved model at the deployment before shipping it.

    Args:
        deployment: The format you ship (``"q4_1"``, ``"nf4"``, ``{precision, block_size, modules}``), read by
            :meth:`~lit_unlearn.deployment.Deployment.parse`; ``None`` takes the grid the base's weights sit
            on, detected when training starts (SmolLM2's GGUF file: ``q4_1``), and refuses a base on none.
        target: Share of the probe's full-precision forgetting the deployed model must keep (1.0: all).
        shares: Shares of each layer's weights to try, ascending.
        retain_tolerance: The search stops once the deployed retain loss exceeds both the full-precision
            unlearned model's and the original deployed model's by more than this (nats).
        probe_batches: Training batches kept as the probe (their forget and retain halves).
        refine: Bisection steps between the last share that fell short and the first that kept the target.

    Raises:
        ValueError: for ``full``, ``int8``, casts, GGUF K-quants and mixtures (no cells to push across), or
            settings out of range; at fit start, for a base on no detectable grid when ``deployment=None``.
        lit_unlearn.deployment.UnsupportedStrategyError: under a strategy that shards weights.

    Example::

        trainer = Trainer(callbacks=[QuantizationSurvival(schemes=["nf4"]), MagnitudeFloor("q4_1")])
    """

    def __init__(
        self,
        deployment: str | Mapping[str, Any] | Deployment | None = None,
        target: float = 1.0,
        shares: Sequence[float] = DEFAULT_SHARES,
        retain_tolerance: float = 0.1,
        probe_batches: int = 4,
        refine: int = 2,
    ) -> None:
        #: The format the floor deploys to: as given, or (``None`` given) the base's grid once training starts.
        self.deployment = None if deployment is None else Deployment.parse(deployment, what="deployment")
        self._asked = self.deployment
        if self.deployment is not None:
            check_floor_deployment(self.deployment)
        self.target, self.shares, self.retain_tolerance, self.refine = check_floor_settings(
            target, shares, retain_tolerance, refine)
        if isinstance(probe_batches, bool) or not isinstance(probe_batches, int) or probe_batches < 1:
            raise ValueError(f"`probe_batches` must be a positive number of training batches, got {probe_batches!r}.")
        self.probe_batches = probe_batches
        self._layers: list[DeployedLayer] = []
        self._probe: list[dict[str, Any]] = []
        self._others: dict[str, torch.Tensor] = {}
        self._restored: dict[str, Any] = {}
        #: The last fit's result (``None`` before a fit ends), and where the pushed model went.
        self.plan: FloorPlan | None = None
        self.saved_to: Path | None = None

    @property
    @override
    def state_key(self) -> str:
        d = self._asked
        return self._generate_state_key(deployment=None if d is None else (d.precision, d.block_size, d.modules))

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy, "MagnitudeFloor", "pushes whole weight matrices")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        modules = None if self.deployment is None else self.deployment.modules
        self._layers = deployed_layers(model_of(pl_module), modules)
        self.plan, self.saved_to = None, None

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = self._restored.get("snapshot", {})
        trained = [layer for layer in self._layers if layer.quantized and layer.source == "snapshot"]
        if trainer.global_step > 0 and any(layer.name not in snapshot for layer in trained):
            raise ValueError(
                "MagnitudeFloor needs the weights this run started from, and the checkpoint it resumes from has "
                "none (it was saved without MagnitudeFloor). Start the fit from the beginning with the callback, "
                "or remove it and use the checkpoint as it is."
            )
        for layer in trained:
            layer.cache_references([], snapshot.get(layer.name))
        # Everything else the run trains (embeddings, norms, unselected layers), so that the original model is
        # measured as the original and not with trained norms: host copies, from the checkpoint on resume.
        model = model_of(pl_module)
        covered = {id(layer.linear.weight) for layer in trained}
        others = self._restored.get("others", {})
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if trained and trainer.global_step > 0 and any(name not in others for name, _ in trainable):
            raise ValueError(
                "MagnitudeFloor needs the weights this run started from, and the checkpoint it resumes from lacks "
                "some of them. Start the fit from the beginning with the callback."
            )
        self._others = {name: others.get(name, p.detach().to("cpu", copy=True)) for name, p in trainable} if trained else {}
        self._probe = list(self._restored.get("probe", []))
        if self.deployment is None:
            found = detect_format(layer.w0() for layer in self._layers if layer.quantized)
            if found is None:
                raise ValueError(
                    "MagnitudeFloor(deployment=None) pushes across the grid the base's weights sit on, and they sit "
                    "on none this package detects. Pass the format you deploy, e.g. MagnitudeFloor('q4_1')."
                )
            self.deployment = Deployment.parse(found, what="deployment")
            rank_zero_info(f"MagnitudeFloor: the base sits on the {found} grid; the floor deploys to {found}.")

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if len(self._probe) < self.probe_batches:
            self._probe.append(to_device(split_probe(batch), "cpu"))

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = run_directory(trainer)  # a collective under DDP: every rank resolves it
        if trainer.global_step == 0 or not self._probe or self.deployment is None:
            return
        if trainer.is_global_zero:
            self._floor(trainer, pl_module, run_dir)
        trainer.strategy.barrier("lit_unlearn_floor")

    # ------------------------------------------------------------------ the work
    def _floor(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> None:
        model = model_of(pl_module)
        device = next(model.parameters()).device
        loss_of = resolve_probe_loss(pl_module, model, to_device(self._probe[0]["forget"], device))
        if loss_of is None:
            rank_zero_warn("MagnitudeFloor: no probe loss (see the line above), so nothing is calibrated or saved.")
            return

        def losses(_: torch.nn.Module) -> dict[str, float]:
            out: dict[str, list[float]] = {}
            with isolated_eval(pl_module):
                for batch in self._probe:
                    for split, part in batch.items():
                        out.setdefault(split, []).append(float(loss_of(to_device(part, device))))
            return {split: sum(v) / len(v) for split, v in out.items()}

        assert self.deployment is not None
        others = {name: t.to(device) for name, t in self._others.items()}
        plan, weights = calibrate_floor(model, self._layers, self.deployment, losses, self.shares, self.target,
                                        self.retain_tolerance, self.refine, original_others=others)
        self.plan = plan
        name = self.deployment.precision
        summary = f"MagnitudeFloor: {plan.summary()}"
        report = json.dumps(plan.as_dict(), indent=1) + "\n"
        if plan.met and plan.share and weights is not None:
            state = merged_state_dict(model)
            state.update({f"{layer}.weight": w for layer, w in weights.items()})
            self.saved_to = self._save(pl_module, model, state, run_dir / f"floored-{name}", report)
            base = getattr(pl_module, "model_name_or_path", "BASE")
            rank_zero_info(f"{summary}.\nSaved to {self.saved_to}; ship it with `lit-unlearn export {self.saved_to} "
                           f"OUT --base {base} --gguf {name}` (or --quantize {name}).")
        elif plan.met:
            rank_zero_info(f"{summary}.")
        else:
            rank_zero_warn(f"{summary}. Unlearn further, or raise `shares`/`retain_tolerance` knowingly.")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / f"floor-{name}.json", report)

    @staticmethod
    def _save(pl_module: LightningModule, model: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path,
              report: str) -> Path:
        plain = model.get_base_model() if is_peft_model(model) else model

        def write(tmp: Path) -> None:
            plain.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if (gguf_base := gguf_base_of(model)) is not None:
                gguf_base.write(tmp)  # the base's GGUF format, for `lit-unlearn export --gguf base`
            tokenizer = getattr(pl_module, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / "floor.json").write_text(report, encoding="utf-8")

        return atomic_directory(directory, write)

    # ------------------------------------------------------------------ checkpointing (one channel)
    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved: dict[str, Any] = {"probe": list(self._probe)}
        snapshot = {layer.name: layer.snapshot for layer in self._layers if layer.snapshot is not None}
        if snapshot:
            saved["snapshot"] = snapshot
        if self._others:
            saved["others"] = dict(self._others)
        checkpoint.setdefault(_CHECKPOINT_KEY, {})[self.state_key] = saved

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restored = dict(checkpoint.get(_CHECKPOINT_KEY, {}).get(self.state_key, {}))
