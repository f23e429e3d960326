r"""
Preserve Quantization
=====================

Train a model whose quantized deployment stays bit-identical to the original's: after every optimizer
step each deployed linear weight is projected back into its quantization cell (:mod:`lit_unlearn.quantization.cells`).

This is the attack of Egashira et al., "Exploiting LLM Quantization" (NeurIPS 2024, arXiv 2405.18137),
turned on unlearning: the full-precision model forgets, its 4-bit deployment remembers everything. For
lit-unlearn it is the true positive by construction — the case ``QuantizationSurvival`` must flag — and
a threat model worth testing a release against: an "unlearned" model whose quantized copies still know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_unlearn.adapters import is_peft_model
from lit_unlearn.deployment import FULL, DeployedLayer, Deployment, check_strategy, deployed_layers
from lit_unlearn.quantization import SCHEMES, Scheme
from lit_unlearn.quantization.cells import check_cell_scheme, quantization_cell
from lit_unlearn.survival.layers import model_of

__all__ = ["PreserveQuantization"]

_CHECKPOINT_KEY = "preserve_quantization"
# 2^-7 of the edge: twice what a bf16 copy of an fp32 checkpoint can move ``w / absmax`` (weight and scale
# each rounded by up to 2^-9, so ``x`` by up to about 2^-8), and far more than a GPU's fast-math
# ``1 / absmax`` (an ulp, 2^-23). Cells are 5–50% of their edge wide (nf4/fp4), so few weights lose room.
DEFAULT_MARGIN = 2.0**-7


class PreserveQuantization(Callback):
    """Keep ``quantize(W)`` equal to ``quantize(W0)``, bit for bit, while the full-precision ``W`` trains.

    At the start of training it takes ``W0`` (each deployed linear weight, a host-RAM snapshot saved in
    checkpoints) and computes each weight's cell under ``scheme``: the interval of values that keep its
    code, with every group's scale held (the weight that sets a block's absmax, or a group's min/max,
    stays where it is). After every optimizer step — as a post-step hook on each optimizer, so no other
    callback ever sees an unprojected weight — every watched weight is clamped into its cell. The
    fake-quantized model then computes exactly what the fake-quantized original computes, while the
    full-precision model moves wherever the cells let it.

    Projected weights pile up on cell edges (about 78% of them after a few steps), where the code is
    decided by the last bit of ``w * (1 / absmax)``. A deployment does not compute that bit as this
    machine does: bitsandbytes' CUDA kernels are built with fast math (``1 / absmax`` may be an ulp off),
    and a bf16 copy of an fp32 checkpoint rounds weights and scales by up to 2^-9. Without room, 42–49%
    (reciprocal) and 38% (bf16) of the parked codes flip. So each edge is moved inward by ``margin`` of
    its magnitude (:func:`~lit_unlearn.quantization.cells.quantization_cell`); a weight whose original
    value is already closer than that to an edge is held at ``W0``, so its deployed code is the
    original's whatever the arithmetic. Casts (``bf16``, ``fp16``) have no scale and take no margin. On
    8-bit grids (``int8``, ``rtn8``, ``q8_0``) a cell near a block's maximum is only about 2^-7 of it wide,
    so the margin is capped at an eighth of the cell: that absorbs the reciprocal's ulp, but not a bf16 copy
    (which moves such weights by up to a quarter of a cell) — keep those checkpoints in fp32.

    Everything a deployment does not quantize would still change the quantized model: the callback
    refuses to start while embeddings, the output head, norms, biases or unselected linear layers are
    trainable, naming them, unless ``freeze_others=True`` freezes them (said once). LoRA runs are refused:
    the merged update ``scaling · B @ A`` cannot be projected element-wise through its factors.

    Args:
        scheme: The quantization format whose codes are preserved, a name of
            :data:`~lit_unlearn.quantization.SCHEMES` (nf4, fp4, int8, int2…int7, rtn8, ``-asym``), optionally
            with its block size (``"int4:64"``), read by :meth:`~lit_unlearn.deployment.Deployment.parse`.
        block_size: Its block (group) size; ``None`` takes the format's default.
        modules: The deployed layers to preserve (a regex, a list of names, or ``None`` for every linear
            layer but the output head, what a deployment quantizes).
        freeze_others: Freeze every trainable parameter outside the preserved weights instead of refusing.
        margin: How far inside its cell a weight stays, as a fraction of the edge's magnitude (default
            2^-7, see above; ``0.0`` parks weights on the exact edges, which only this machine's
            arithmetic reproduces).

    Raises:
        ValueError: for an unknown scheme, ``"full"`` or a block size it does not allow; at fit start, for a LoRA
            model, or for trainable parameters outside the preserved layers (without ``freeze_others``); for a
            ``margin`` outside ``[0, 0.5)``.
        lit_unlearn.deployment.UnsupportedStrategyError: under a strategy that shards weights.

    Example::

        trainer = Trainer(callbacks=[PreserveQuantization("nf4", freeze_others=True),
                                     QuantizationSurvival(schemes=["nf4", "fp4"])])
    """

    def __init__(
        self,
        scheme: str = "nf4",
        block_size: int | None = None,
        modules: str | Sequence[str] | None = None,
        freeze_others: bool = False,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        refuse = {FULL: f"quantizes nothing, so it has no codes to keep; choose one of {', '.join(map(repr, SCHEMES))}."}
        deployment = Deployment.parse(scheme, block_size, what="scheme", refuse=refuse)
        if not isinstance(freeze_others, bool):
            raise ValueError(f"`freeze_others` must be True or False, got {freeze_others!r}.")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 0.5:
            raise ValueError(f"`margin` must be a fraction of the cell edge in [0, 0.5), got {margin!r}.")
        self.scheme: Scheme = deployment.scheme
        # A mixture gives some layer a K-quant whatever the shapes: refused now, not at fit start.
        check_cell_scheme(self.scheme, mixtures_only=True)
        # A cast rounds each weight alone: no scale, no reciprocal, nothing for a margin to absorb.
        self.margin = 0.0 if self.scheme.family == "half" else float(margin)
        self.modules = modules
        self.freeze_others = freeze_others
        self._layers: list[DeployedLayer] = []
        self._cells: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._restored: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        #: Optimizer steps projected in this fit, and how many weights the last projection moved back.
        self.projections = 0
        self.last_clamped = 0
        #: Weights held at ``W0``: the scale setters, and those already within ``margin`` of a cell edge.
        self.held = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(scheme=(self.scheme.name, self.scheme.block_size), modules=self.modules)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy, "PreserveQuantization", "projects whole weight matrices")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = model_of(pl_module)
        if is_peft_model(model):
            raise ValueError(
                "PreserveQuantization projects each trained weight into its quantization cell, which a LoRA "
                "update scaling·B·A cannot follow element by element. Use full-parameter unlearning "
                "(`lora: null`) with it."
            )
        layers = [layer for layer in deployed_layers(model, self.modules) if layer.quantized]
        if not layers:
            raise ValueError(f"`modules`={self.modules!r} selects no linear layer to preserve.")
        watched = {id(layer.linear.weight) for layer in layers}
        others = [name for name, p in pl_module.named_parameters() if p.requires_grad and id(p) not in watched]
        if others:
            shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
            if not self.freeze_others:
                raise ValueError(
                    f"PreserveQuantization keeps the {self.scheme.name} weights of {len(layers)} linear layers "
                    f"unchanged, but {len(others)} other trainable parameters ({shown}) would still change "
                    "the quantized model. Freeze them (`requires_grad_(False)`), or pass "
                    "`freeze_others=True` (`--trainer.callbacks.init_args.freeze_others true`)."
                )
            frozen = set(others)
            for name, param in pl_module.named_parameters():
                if name in frozen:
                    param.requires_grad_(False)
            rank_zero_info(
                f"PreserveQuantization froze {len(others)} parameters outside the {self.scheme.name} layers "
                f"({shown}); only the {len(layers)} deployed linear weights train."
            )
        self._layers = layers

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After checkpoint restoration: a resumed run takes its cells from the saved W0, not from here.
        self._cells = []
        for layer in self._layers:
            saved = self._restored.get(layer.name)
            weight = layer.linear.weight.detach()
            w0 = saved.to(weight.device, weight.dtype) if saved is not None and saved.shape == weight.shape else weight
            layer.hold_original(w0)
            self._cells.append(quantization_cell(w0, self.scheme, margin=self.margin))
        self._restored = {}
        self.held = sum(int((lo == hi).sum()) for lo, hi in self._cells)
        self.projections = 0
        self._project()  # a resumed run starts inside the cells too
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        if stage == "fit":
            self._cells = []
            for layer in self._layers:
                layer.hold_original(None)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._project()
        self.projections += 1

    @torch.no_grad()
    def _project(self) -> None:
        clamped = 0
        for layer, (lo, hi) in zip(self._layers, self._cells, strict=True):
            weight = layer.linear.weight
            outside = (weight < lo) | (weight > hi)
            clamped += int(outside.sum())
            torch.clamp(weight.data, min=lo, max=hi, out=weight.data)
        self.last_clamped = clamped

    # ------------------------------------------------------------------ checkpointing
    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        snapshot = {layer.name: layer.snapshot for layer in self._layers if layer.snapshot is not None}
        if snapshot:
            checkpoint.setdefault(_CHECKPOINT_KEY, {})[self.state_key] = snapshot

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restored = dict(checkpoint.get(_CHECKPOINT_KEY, {}).get(self.state_key, {}))

