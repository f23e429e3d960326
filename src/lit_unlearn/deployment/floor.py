"""Keep a small update through re-quantization: push the updates that nearly crossed a cell edge across it.

A base whose weights sit on a deployment's grid (a GGUF file's own format, QLoRA's nf4) gives back every
update smaller than half a step when re-quantized to that grid: the deployed file is the original model.
Unlearning at the papers' learning rates lives there (SmolLM2 in Q4_1: under 0.01% of codes change, and
most of the forgetting comes back, docs/real_model.md). The *magnitude floor* (MANSU, arXiv 2605.15138)
answers by making updates at least a step large; made sparse here, it moves only the ``share`` of each
layer's weights whose update came closest to its cell edge, just across it, in the update's direction
(:func:`~lit_unlearn.quantization.cells.push_across`), and leaves every other weight at ``W0 + ΔW``.

How large a share is needed depends on the run, so :func:`calibrate_floor` measures it: the probe's forget
and retain losses at the deployment, for increasing shares, until the deployed model keeps ``target`` of the
full-precision model's forgetting on the probe (``effect_retained``, as the survival check defines it), or
the retain loss has risen by more than ``retain_tolerance`` above both the full-precision unlearned model's
and the original deployed model's.
:class:`~lit_unlearn.callbacks.MagnitudeFloor` runs it at the end of a fit and saves the pushed model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lit_unlearn.deployment.config import FULL, Deployment
from lit_unlearn.deployment.layers import DeployedLayer
from lit_unlearn.deployment.model import deployed_model
from lit_unlearn.quantization import Scheme
from lit_unlearn.quantization.cells import check_cell_scheme, push_across
from lit_unlearn.swap import swapped_weights

__all__ = [
    "DEFAULT_SHARES", "FloorPlan", "FloorTrial", "calibrate_floor", "check_floor_deployment", "check_floor_settings",
    "floored_weights",
]

#: Shares tried in order (the plain update, share 0, always first): each about twice the one before.
DEFAULT_SHARES = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)

Losses = Callable[[nn.Module], Mapping[str, float]]


def check_floor_deployment(deployment: Deployment) -> Scheme:
    """The scheme of a deployment the floor can push across, else a ValueError naming the choices."""
    scheme = deployment.scheme
    if deployment.precision == FULL or scheme is None:
        raise ValueError("The magnitude floor pushes weights across a quantization grid; 'full' has none. Choose "
                         "the format you deploy: 'q4_1', 'q4_0', 'q5_0', 'q5_1', 'q8_0', 'nf4', 'fp4' or an RTN scheme.")
    if scheme.family in ("llm_int8", "half"):
        raise ValueError(
            f"The magnitude floor cannot serve {scheme.name!r}: "
            + ("LLM.int8 quantizes activations and keeps outlier columns in 16 bits, so a weight's cell is not "
               "its own" if scheme.family == "llm_int8" else "a cast has no grid of levels to push across")
            + ". Choose a weight-only format: 'q4_1', 'q4_0', 'q5_0', 'q5_1', 'q8_0', 'nf4', 'fp4' or an RTN scheme."
        )
    check_cell_scheme(scheme)  # K-quants and mixtures: no cells
    return scheme


def check_floor_settings(
    target: float, shares: Sequence[float], retain_tolerance: float, refine: int
) -> tuple[float, tuple[float, ...], float, int]:
    """The calibration's settings, checked (each error names the value and what it must be) and normalised."""

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float))

    if not number(target) or not target > 0:
        raise ValueError(f"`target` is the share of the forgetting to keep, above 0 (1.0: all of it); got {target!r}.")
    shares = tuple(shares)
    if not shares or any(not number(s) or not 0 < s <= 1 for s in shares) or list(shares) != sorted(shares):
        raise ValueError(f"`shares` must be ascending fractions in (0, 1], e.g. {DEFAULT_SHARES}; got {shares!r}.")
    if not number(retain_tolerance) or not retain_tolerance >= 0:
        raise ValueError(f"`retain_tolerance` is a rise of the retain loss in nats, at least 0; got {retain_tolerance!r}.")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"`refine` is a number of bisection steps, 0 or more; got {refine!r}.")
    return float(target), tuple(float(s) for s in shares), float(retain_tolerance), refine


@torch.no_grad()
def floored_weights(layers: Sequence[DeployedLayer], scheme: Scheme, share: float) -> tuple[dict[str, torch.Tensor], int]:
    """Per updated layer (by name), ``W0 + ΔW`` with :func:`~lit_unlearn.quantization.cells.push_across`'s
    ``share`` pushed across their ``scheme`` cell edge, in the layer's dtype; and how many weights moved.
    Layers the deployment leaves in full precision or that have no update are not in the map."""
    weights: dict[str, torch.Tensor] = {}
    pushed = 0
    for layer in layers:
        if not layer.quantized or layer.source == "frozen":
            continue
        merged = layer.merged()
        weights[layer.name], n = push_across(layer.w0(), merged, layer.scheme_for(scheme), share)
        pushed += n
    return weights, pushed


@dataclass(frozen=True)
class FloorTrial:
    """One share tried: weights pushed, the probe's losses at the deployment, and the share of the
    full-precision forgetting (forget-loss rise over the original's) that the deployment keeps."""

    share: float
    pushed: int
    forget: float
    retain: float | None
    effect_retained: float


@dataclass(frozen=True)
class FloorPlan:
    """What :func:`calibrate_floor` found: the share to ship (``None`` when no share tried reached the target
    within the retain tolerance), every trial, and the reference losses (``full``: the unlearned model in
    full precision; ``original``: the original model, in full precision and at the deployment)."""

    deployment: Deployment
    target: float
    share: float | None
    trials: tuple[FloorTrial, ...]
    full: Mapping[str, float]
    original: Mapping[str, float]
    original_deployed: Mapping[str, float]
    notes: tuple[str, ...] = field(default=())

    @property
    def met(self) -> bool:
        return self.share is not None

    @property
    def chosen(self) -> FloorTrial | None:
        return next((t for t in self.trials if t.share == self.share), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": {"precision": self.deployment.precision, "block_size": self.deployment.block_size},
            "target": self.target, "share": self.share, "met": self.met,
            "trials": [asdict(t) for t in self.trials], "full": dict(self.full), "original": dict(self.original),
            "original_deployed": dict(self.original_deployed), "notes": list(self.notes),
        }

    def summary(self) -> str:
        name = self.deployment.precision
        plain = self.trials[0]
        said = f"{name} keeps {plain.effect_retained:.2f} of the probe's forgetting as trained"
        chosen = self.chosen
        if chosen is None:
            last = self.trials[-1]
            why = f" ({self.notes[-1]})" if self.notes else ""
            return (f"{said}; no share up to {last.share:.2%} reached {self.target:.2f} within the retain tolerance "
                    f"(the last kept {last.effect_retained:.2f}{why}); the pushed model is not saved")
        if chosen.share == 0.0:
            return f"{said}: nothing to push"
        retain = "" if chosen.retain is None or self.full.get("retain") is None else \
            f", retain loss {chosen.retain - self.full['retain']:+.3f} against the unlearned model in full precision"
        return (f"{said}; pushing the {chosen.share:.2%} of each layer's weights closest to their cell edge across "
                f"it ({chosen.pushed} weights) keeps {chosen.effect_retained:.2f}{retain}")


def calibrate_floor(
    model: nn.Module,
    layers: Sequence[DeployedLayer],
    deployment: Deployment,
    losses: Losses,
    shares: Sequence[float] = DEFAULT_SHARES,
    target: float = 1.0,
    retain_tolerance: float = 0.1,
    refine: int = 2,
    original_others: Mapping[str, torch.Tensor] | None = None,
) -> tuple[FloorPlan, dict[str, torch.Tensor] | None]:
    """The smallest share of :data:`DEFAULT_SHARES` (or ``shares``, ascending) whose pushed weights keep
    ``target`` of the probe's forgetting at ``deployment``, and those weights (``None`` when none does).

    ``losses(model)`` returns the probe's mean ``{"forget": …, "retain": …}`` losses (``retain`` optional)
    of the model as it computes now; it is called inside :func:`deployed_model` contexts. The forgetting is
    the rise of the forget loss over the original model's, at full precision (``Δ_full``) and at the
    deployment (``Δ_q``); ``effect_retained = Δ_q / Δ_full``. Share 0 (the plain merge) is tried first; a
    share is taken when it reaches ``target``, and the search stops once the deployed retain loss exceeds the
    higher of the full-precision unlearned model's and the original deployed model's by more than
    ``retain_tolerance`` (larger shares only move more). Between the last share that fell short and the
    first that kept the target the gap is then halved, geometrically, ``refine`` times.

    ``original_others``: the original values of every other parameter the run trained (embeddings, norms,
    unselected layers of a full-parameter run; by ``model.named_parameters()`` name), swapped in while the
    original model is measured, so that it is the original and not a hybrid. LoRA runs train none.

    Raises:
        ValueError: for a deployment the floor cannot push across (:func:`check_floor_deployment`), or
            settings out of range (:func:`check_floor_settings`).
    """
    scheme = check_floor_deployment(deployment)
    target, shares, retain_tolerance, refine = check_floor_settings(target, shares, retain_tolerance, refine)
    selected = [layer for layer in layers if layer.quantized]
    with swapped_weights(model, original_others or {}), deployed_model(model, layers, None, original=True):
        original = dict(losses(model))
    with swapped_weights(model, original_others or {}), deployed_model(model, layers, scheme, original=True):
        original_deployed = dict(losses(model))
    with deployed_model(model, layers, None):
        full = dict(losses(model))
    forgetting = full["forget"] - original["forget"]
    # What a push may not make worse: the retain loss of the unlearned model or of the original deployed, the
    # higher (GDR fits the retain batches, so the unlearned model's own is often far below the original's).
    retain_bar = max((v["retain"] for v in (full, original_deployed) if v.get("retain") is not None), default=None)
    trials: list[FloorTrial] = []
    notes: list[str] = []
    if not forgetting > 0:
        notes.append(f"the probe's forget loss did not rise ({forgetting:+.4f}): nothing was forgotten to keep")

    def attempt(share: float) -> tuple[bool | None, dict[str, torch.Tensor]]:
        """Try ``share``: True when it keeps the target, False when not, None when it breaks the retain loss."""
        weights, pushed = floored_weights(selected, scheme, share)
        with deployed_model(model, layers, scheme, replaced=weights):
            q = dict(losses(model))
        effect = (q["forget"] - original_deployed["forget"]) / forgetting if forgetting > 0 else float("nan")
        trials.append(FloorTrial(share, pushed, q["forget"], q.get("retain"), effect))
        if share > 0 and retain_bar is not None and q.get("retain") is not None \
                and q["retain"] - retain_bar > retain_tolerance:
            # Checked first: a share that keeps the forgetting by breaking the model is no answer.
            notes.append(f"share {share:g}: retain loss {q['retain'] - retain_bar:+.3f} above the bar "
                         f"(tolerance {retain_tolerance:g})")
            return None, weights
        return forgetting <= 0 or effect >= target, weights

    chosen: float | None = None
    kept: dict[str, torch.Tensor] | None = None
    below = 0.0  # the largest share known to fall short
    for share in (0.0, *shares):
        ok, weights = attempt(share)
        if ok is None:
            break
        if ok:
            chosen, kept = share, weights
            break
        below = share
    # Between the last share that fell short and the first that kept the target, halve the gap (geometrically)
    # `refine` times: the smallest share that keeps the forgetting moves the fewest weights.
    for _ in range(refine if chosen and below > 0 else 0):
        middle = (below * chosen) ** 0.5
        ok, weights = attempt(middle)
        if ok:
            chosen, kept = middle, weights
        else:
            below = middle
    trials.sort(key=lambda t: t.share)
    plan = FloorPlan(deployment, target, chosen, tuple(trials), full, original, original_deployed, tuple(notes))
    return plan, kept
