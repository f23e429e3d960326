r"""
Survival Engine
===============

How much of an update a quantized deployment keeps, in weight space and in function space, on a model as
it stands: no Trainer, no loggers. ``QuantizationSurvival`` (``lit_unlearn.callbacks``) runs one engine per
fit and decides when to check and where the numbers go.

Where ``W0`` comes from:

* **LoRA** (peft) layers: ``W0`` is the frozen base weight and ``ΔW = scaling · B @ A``. Nothing is
  copied; ``Q(W0)`` is computed once per scheme.
* **Any other trainable linear layer** (full-parameter unlearning, a plain ``LightningModule``): a
  snapshot taken by :meth:`SurvivalEngine.prepare`, in host RAM in the weight's own dtype — one copy of the
  watched weights (4 bytes per weight in fp32, 2 in bf16) — which a caller may save
  (:meth:`SurvivalEngine.snapshot`) and hand back to a later ``prepare`` so that measuring resumes from the
  true original.
* **LoRA over a bitsandbytes 4-bit base** (QLoRA, ``Linear4bit``): ``W0`` is the base decoded as a GPU
  decodes it, the merged weight ``W0 + ΔW`` is formed as peft's 4-bit merge forms it (in float32) and
  re-quantized: in the base's own format that is the model a 4-bit user ships (``Q(W0) = W0``, the
  base itself), in the other schemes the same merge quantized their way. The base's layers without an
  adapter are deployed as stored. With double quantization the weight-space statistics use fp32
  block scales; the functional check re-quantizes exactly (8-bit scales too).

Either way the cached ``Q(W0)`` adds 1 byte per weight and scheme of host RAM (plus one fp32 scale per
block), and the weight-space check holds at most one layer's temporaries on the device. The functional
check runs each scheme's probe forwards over one deployed copy of the model's layers when that copy takes
at most :data:`EAGER_PROBE_BYTES` (SmolLM2-135M: 0.4 GiB in fp32), so each layer is quantized once per
scheme and every forward runs at a plain forward's speed; above it, a layer's deployed weight exists only
while that layer runs (formed again for each forward, from codes kept in host RAM where no compiled pass
applies), never a copy of the model.

Under FSDP2 (weights sharded by rows as ``DTensor``\ s) the weight-space sums are reduced over the ranks
(or a layer is gathered alone), so :meth:`SurvivalEngine.weight_check` and
:meth:`SurvivalEngine.snapshot` are collectives that every rank calls; the functional check deploys each
weight while its block runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_unlearn.deployment import DeployedLayer, Deployment, Modules, deployed_model
from lit_unlearn.deployment.layers import holding_deployed
from lit_unlearn.quantization import Scheme, SurvivalStats, detect_format, get_scheme
from lit_unlearn.quantization.fit import summarize
from lit_unlearn.survival.layers import delta_buffer, prepare_references, select_linear_layers
from lit_unlearn.survival.probe import ProbeLoss, isolated_eval, mean_losses

__all__ = [
    "HISTORY_KEYS", "MIN_FORGET_EFFECT", "ProbeLosses", "SurvivalEngine", "WeightCheck", "effect_retained",
]

#: Keys of a per-layer row (:meth:`WeightCheck.rows`), in order: the columns of the per-layer table.
HISTORY_KEYS = (
    "step", "scheme", "layer", "changed", "below_half_step", "retained", "cosine", "rel_error",
    "delta_norm", "qdelta_norm", "numel",
)
#: Smallest full-precision change of the forget loss (nats per token) for which ``effect_retained`` is
#: given. Below it the ratio divides quantization noise by almost nothing; early in a run, or with a
#: learning rate too small to move the loss, the metric is simply absent.
MIN_FORGET_EFFECT = 1e-3

#: Largest deployed copy of the model's layers (bytes) that the functional check holds for one scheme's
#: probe forwards; above it each layer is deployed only while it runs (see the module's docstring).
EAGER_PROBE_BYTES = 1 << 30

#: Probe losses of one model state: ``{"fp": {split: loss}, <scheme>: {split: loss}}``, the mean loss per
#: split (``forget``, and ``retain`` when the probe has it) at full precision and deployed per scheme.
ProbeLosses = dict[str, dict[str, float]]


@dataclass(frozen=True)
class WeightCheck:
    """One weight-space check: statistics per watched layer and scheme, and pooled over the layers.

    Attributes:
        layers: ``{layer name: {scheme name: stats}}``, in the order the layers are watched.
        pooled: ``{scheme name: stats}`` pooled over all watched layers, as if they were one: shares weighted
            by parameter count, projections by ``‖ΔW‖²`` (:meth:`SurvivalStats.aggregate`).
    """

    layers: dict[str, dict[str, SurvivalStats]]
    pooled: dict[str, SurvivalStats]

    def rows(self, step: int) -> list[dict[str, Any]]:
        """One plain dict per layer and scheme, keyed by :data:`HISTORY_KEYS`, tagged with ``step``."""
        return [
            {"step": step, "scheme": scheme, "layer": layer, **stats.as_dict(), "numel": stats.numel}
            for layer, by_scheme in self.layers.items()
            for scheme, stats in by_scheme.items()
        ]


class SurvivalEngine:
    r"""Measure how much of a model's update survives quantization, in weight and function space.

    * **weight space** (:meth:`weight_check`), per watched linear layer and pooled over all of them: the
      share of weights whose code changes between ``Q(W0)`` and ``Q(W0 + ΔW)`` (``changed``), the share of
      the update under half a quantization step (``below_half_step``), the projection
      ``⟨Q(W1) − Q(W0), ΔW⟩ / ‖ΔW‖²`` (``retained``), its ``cosine`` and ``rel_error`` (see
      :mod:`lit_unlearn.quantization.survival`).
    * **function space** (:meth:`probe`, :meth:`functional_rows`), on fixed probe batches: the forget loss
      ``L`` of the current and original models, each in full precision and deployed (fake-quantized), and
      ``effect_retained = (L_q(cur) − L_q(orig)) / (L_fp(cur) − L_fp(orig))``, the share of the change of
      the forget loss that survives quantization (:func:`effect_retained`); with retain data also
      ``retain_shift = L_q(cur) − L_fp(cur)``. The quantized current model is the deployed one: LoRA merged
      into the base, then quantized. The original model has every adapter off and each watched layer at
      ``W0`` or ``Q(W0)``; its other parameters are as they are when it is probed.

    Where ``W0`` comes from and what the references cost: see the module docstring. Probe runs use eval
    mode, no autograd and a forked RNG, and restore every weight, so a probe between training steps leaves
    training bit-identical.

    Args:
        model: The network whose linear layers are watched (with LoRA: the peft model).
        schemes: Quantization formats to measure: :class:`~lit_unlearn.quantization.Scheme`\ s, names from
            :data:`lit_unlearn.quantization.SCHEMES` (with ``block_size``) or
            :class:`~lit_unlearn.deployment.Deployment`\ s.
        modules: Which linear layers to watch: ``None`` for every ``nn.Linear`` but the output head (what a
            4-bit deployment quantizes), a regex searched in each layer name, a list of names (each matching
            a full name or its last components) or a ``filter_fn(name, module)``.
        block_size: Block (group) size for the schemes given by name; ``None`` takes each format's default.

    Raises:
        ValueError: If ``modules`` selects no trainable or adapted linear layer (the message lists the linear
            layers there are), or for a LoRA layer whose base is trainable, merged in place, or DoRA; if
            ``schemes`` is empty or holds full precision.

    Example::

        engine = SurvivalEngine(model, ["nf4"])
        engine.prepare()  # W0 and Q(W0), before training
        original = engine.probe(loss_fn, [probe], original=True)[0]
        ...  # train
        check = engine.weight_check()
        check.pooled["nf4"].retained
        engine.functional_rows(step, engine.probe(loss_fn, [probe])[0], original)[0]["effect_retained"]
    """

    def __init__(
        self,
        model: nn.Module,
        schemes: Sequence[Scheme | Deployment | str],
        modules: Modules = None,
        block_size: int | None = None,
    ) -> None:
        self.model = model
        self.modules = modules
        #: The schemes measured, in order; :meth:`add_scheme` appends one.
        self.schemes: tuple[Scheme, ...] = tuple(_as_scheme(item, block_size) for item in schemes)
        if not self.schemes:
            raise ValueError("`schemes` must name at least one quantization scheme.")
        #: Every deployed layer under ``modules``: the watched ones, and LoRA layers merged but not quantized.
        self.layers: list[DeployedLayer] = select_linear_layers(model, modules)

    @property
    def watched(self) -> list[DeployedLayer]:
        """The layers with an update that a deployment quantizes: those the weight-space check measures."""
        return [layer for layer in self.layers if layer.quantized and layer.source != "frozen"]

    @property
    def snapshot_layers(self) -> list[str]:
        """Names of the watched layers whose ``W0`` is a snapshot of their trainable weight: what
        :meth:`prepare` needs saved to measure from the true original after a restart."""
        return [layer.name for layer in self.layers if layer.source == "snapshot" and layer.quantized]

    def add_scheme(self, scheme: Scheme | Deployment | str) -> None:
        """Measure one more scheme; before :meth:`prepare`, which caches its ``Q(W0)``."""
        self.schemes = (*self.schemes, _as_scheme(scheme, None))

    # ------------------------------------------------------------------ references
    def base_format(self, snapshot: Mapping[str, torch.Tensor] | None = None) -> str | None:
        """The format whose grid every watched layer's ``W0`` sits on (:func:`detect_format`), or ``None``.

        A model loaded from a GGUF or 4-bit file and cast to float is exactly on that format's grid, and
        re-quantizing it to that format is where an update under half a step rounds back to the original
        codes; it is also the format such a model is most likely deployed in. ``W0`` is taken as
        :meth:`prepare` will take it: ``snapshot``'s where it has one. Under FSDP2 each rank reads its own
        rows (whole rows: every GGUF block, and nf4/fp4 blocks of rows whose length is a multiple of 64).
        """
        watched = self.watched
        if not watched:
            return None
        saved = snapshot or {}
        return detect_format(_local(saved.get(layer.name, layer.w0())) for layer in watched)

    def prepare(self, snapshot: Mapping[str, torch.Tensor] | None = None) -> None:
        """Take each watched layer's host copy of ``W0`` (snapshot layers) and cache ``Q(W0)`` per scheme.

        ``snapshot`` maps layer names to a saved ``W0`` (from :meth:`snapshot` of an earlier run); layers
        missing from it copy their current weight. Work and memory are one layer at a time on the device;
        the results live in host RAM.
        """
        prepare_references(self.layers, self.schemes, dict(snapshot or {}))

    def snapshot(self) -> dict[str, torch.Tensor]:
        """``W0`` of every snapshot layer, each a whole weight (gathered from every rank's rows when sharded,
        one layer at a time: a collective), for a checkpoint; empty for LoRA, whose ``W0`` is the base."""
        return {layer.name: layer.whole_snapshot() for layer in self.layers if layer.snapshot is not None}

    def layer_formats(self) -> list[str]:
        """One line per scheme some layer is deployed in another format than asked (a mixture's per-tensor
        types, a group fitted to rows it does not divide), naming those layers; empty when none is."""
        quantized = [layer for layer in self.layers if layer.quantized]
        lines = [summarize(s, {layer.name: layer.scheme_for(s) for layer in quantized}) for s in self.schemes]
        return [line for line in lines if line]

    def sharding(self) -> str | None:
        """Under FSDP2, how many layers each rank measures on its own rows per scheme, and how many are
        gathered one at a time (a shard of nf4/fp4 that is not whole blocks of the flattened weight);
        ``None`` when no watched layer is sharded."""
        sharded = [layer for layer in self.layers if layer.mesh is not None and layer.quantized]
        if not sharded:
            return None
        parts = []
        for scheme in self.schemes:
            own = sum(layer.measured_per_rank(scheme) for layer in sharded)
            gathered = len(sharded) - own
            parts.append(f"{scheme.name}: {own} on each rank's own rows, {gathered} gathered one at a time")
        world = sharded[0].mesh.size()
        return f"FSDP2 ({world} ranks), {len(sharded)} sharded layers; " + "; ".join(parts)

    # ------------------------------------------------------------------ weight space
    def weight_check(self) -> WeightCheck:
        """Per-layer and pooled statistics of the current update, streaming one layer at a time."""
        per_scheme: dict[str, list[SurvivalStats]] = {s.name: [] for s in self.schemes}
        per_layer: dict[str, dict[str, SurvivalStats]] = {}
        buffer = delta_buffer(self.layers)
        for layer in self.watched:
            per_layer[layer.name] = layer.survival(self.schemes, buffer)
            for scheme, stats in per_layer[layer.name].items():
                per_scheme[scheme].append(stats)
        pooled = {scheme: SurvivalStats.aggregate(stats) for scheme, stats in per_scheme.items()}
        return WeightCheck(per_layer, pooled)

    # ------------------------------------------------------------------ function space
    def probe(
        self, loss_fn: ProbeLoss, probes: Sequence[Sequence[Mapping[str, Any]]], original: bool = False
    ) -> list[ProbeLosses]:
        """:data:`ProbeLosses` of the original or current model on each probe, one entry per probe.

        A probe is a list of batches ``{"forget": …, "retain": …}``
        (:func:`~lit_unlearn.survival.probe.split_probe`) on the model's device; ``loss_fn`` maps one split to a scalar loss. Each scheme's deployed weights
        are quantized once for all of their batches and splits (:func:`holding_deployed`), not once per
        forward.
        """
        with isolated_eval(self.model):
            with self._deployed(None, original) if original else contextlib.nullcontext():
                losses = [{"fp": mean_losses(loss_fn, probe)} for probe in probes]
            for scheme in self.schemes:
                with holding_deployed(self.layers), self._deployed(scheme, original):
                    for probe, entry in zip(probes, losses):
                        entry[scheme.name] = mean_losses(loss_fn, probe)
        return losses

    def functional_rows(
        self,
        step: int,
        current: ProbeLosses,
        original: ProbeLosses,
        heldout: ProbeLosses | None = None,
        heldout_original: ProbeLosses | None = None,
    ) -> list[dict[str, Any]]:
        """One plain dict per scheme: the probe losses and the derived functional metrics.

        ``forget_fp``, ``forget_q`` and their ``_original``\\ s, ``effect_retained`` (``None`` under
        :data:`MIN_FORGET_EFFECT`), ``retain_fp``, ``retain_q`` and ``retain_shift`` (``None`` without retain
        data); with ``heldout`` and ``heldout_original`` (a second probe, of data not trained on) the same
        forget losses suffixed ``_heldout`` and ``effect_retained_heldout``.
        """
        rows = []
        for scheme in self.schemes:
            name, fp, q = scheme.name, current["fp"], current[scheme.name]
            shift = q["retain"] - fp["retain"] if "retain" in q else None
            row = {
                "step": step, "scheme": name,
                "forget_fp": fp["forget"], "forget_q": q["forget"],
                "forget_fp_original": original["fp"]["forget"], "forget_q_original": original[name]["forget"],
                "effect_retained": effect_retained(fp, q, original["fp"], original[name]),
                "retain_fp": fp.get("retain"), "retain_q": q.get("retain"), "retain_shift": shift,
            }
            if heldout is not None and heldout_original is not None:
                h_fp, h_q = heldout["fp"], heldout[name]
                row.update({
                    "forget_fp_heldout": h_fp["forget"], "forget_q_heldout": h_q["forget"],
                    "forget_fp_heldout_original": heldout_original["fp"]["forget"],
                    "forget_q_heldout_original": heldout_original[name]["forget"],
                    "effect_retained_heldout": effect_retained(
                        h_fp, h_q, heldout_original["fp"], heldout_original[name]
                    ),
                })
            rows.append(row)
        return rows

    def _deployed(self, scheme: Scheme | None, original: bool) -> contextlib.AbstractContextManager:
        """The deployed model (:func:`~lit_unlearn.deployment.deployed_model`), one layer at a time.

        Original: every adapter off and each watched layer at ``W0`` or ``Q(W0)``. Current quantized: each
        LoRA layer merged, each watched layer at ``Q(W0 + ΔW)``, adapters off.
        """
        layers = self.layers
        if scheme is None:
            # Full precision: only snapshot layers need W0 swapped in; LoRA layers are bare with adapters off.
            layers = [layer for layer in layers if layer.source == "snapshot" and layer.quantized]
        # Sharded weights (FSDP2) are whole only inside their block's forward: deployed there, lazily.
        sharded = any(layer.mesh is not None for layer in self.layers)
        lazy = sharded or _deployed_bytes(layers) > EAGER_PROBE_BYTES
        return deployed_model(self.model, layers, scheme, original=original, lazy=lazy)


def effect_retained(
    fp: Mapping[str, float],
    q: Mapping[str, float],
    fp_original: Mapping[str, float],
    q_original: Mapping[str, float],
) -> float | None:
    """``(L_q(cur) − L_q(orig)) / (L_fp(cur) − L_fp(orig))`` of the forget loss; ``None`` under
    :data:`MIN_FORGET_EFFECT`, where the ratio would divide quantization noise by almost nothing."""
    fp_effect = fp["forget"] - fp_original["forget"]
    if abs(fp_effect) < MIN_FORGET_EFFECT:
        return None
    return (q["forget"] - q_original["forget"]) / fp_effect


def _deployed_bytes(layers: Sequence[DeployedLayer]) -> int:
    """Bytes of one deployed copy of ``layers``' weights (a 4-bit base's in its compute dtype)."""
    total = 0
    for layer in layers:
        weight = layer.linear.weight
        dtype = getattr(layer.linear, "compute_dtype", None) or weight.dtype
        size = torch.empty((), dtype=dtype).element_size() if dtype.is_floating_point else 4
        total += layer.numel * size
    return total


def _as_scheme(item: Scheme | Deployment | str, block_size: int | None) -> Scheme:
    if isinstance(item, Scheme):
        return item
    scheme = item.scheme if isinstance(item, Deployment) else get_scheme(item, block_size)
    if scheme is None:
        raise ValueError(f"`schemes` holds {item}, which is full precision; name quantization schemes only.")
    return scheme


def _local(weight: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a weight sharded by FSDP2 (a ``DTensor``); any other tensor as it is."""
    return weight.to_local() if hasattr(weight, "to_local") else weight
