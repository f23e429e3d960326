"""``UnlearningModule``: LoRA or full-parameter unlearning of a causal LM with GA, NPO, SimNPO and GDR/KLR.

The module is thin glue: the losses live in ``objectives/``, the peft seam in ``adapters.py``, the data
in ``data/``. It loads the model in ``configure_model`` (so sharding strategies can wrap it), builds a
reference only when the objective reads one, and saves the result as safetensors at fit end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_unlearn._atomic import atomic_directory, atomic_write_text
from lit_unlearn._modes import eval_mode
from lit_unlearn._paths import run_directory
from lit_unlearn._rng import get_rng_states, set_rng_states
from lit_unlearn.adapters import LoRA, apply_lora, reference_mode
from lit_unlearn.data.sources import resolve_path
from lit_unlearn.deployment import FULL, Deployment, check_strategy
from lit_unlearn.deployment.qat import QuantizationAwareSwitch
from lit_unlearn.four_bit_base import FourBitBase, four_bit_base
from lit_unlearn.gguf_io import gguf_base_of, load_causal_lm, load_tokenizer
from lit_unlearn.loggers import log_adapter_artifact
from lit_unlearn.objectives import (
    Method,
    ObjectiveSettings,
    apply_row_masks_,
    mean_token_nll,
    objective_settings,
    sure_row_masks,
)
from lit_unlearn.quantization.bnb_decode import keep_4bit_layout
from lit_unlearn.sharding import gathered_state_dict, is_sharded, shard_model, sharding_mesh

__all__ = ["UnlearningModule"]

Dtype = Literal["float32", "bfloat16", "float16"]

_RNG_KEY = "lit_unlearn_rng_states"


# Training fake-quantizes weights only, while an int8 deployment is LLM.int8, which also quantizes activations
# row-wise and keeps outlier feature columns in 16 bits: training through int8 would optimise for another
# model than the one deployed.
_QAT_REFUSED = {
    FULL: "trains through no quantization; leave it unset (None) for plain unlearning, or name a scheme such "
    "as 'nf4' or 'int4:64'.",
    "int8": "'int8' is evaluated as LLM.int8 (activations quantized too, outlier columns in 16 bits), which "
    "weight-only fake quantization cannot train through. Use 'rtn8' (group-wise weight-only 8-bit "
    "round-to-nearest) to train through an 8-bit weight grid.",
}


_STRATEGY_REFUSAL = (
    "{who} {why}; `strategy`={strategy} wraps the model in flat parameters it does not read. Use `strategy: "
    "lit_unlearn.strategies.FSDP2Strategy` (FSDP2, the same per-block sharding, safetensors checkpoints), or "
    "'ddp' when the model fits on one device."
)


def _qat_deployment(spec: str | Deployment | None) -> Deployment | None:
    """``"nf4"``, ``"int4:64"`` or a :class:`Deployment` (its layers too), parsed by :meth:`Deployment.parse`;
    ``None`` → ``None``."""
    if spec is None:
        return None
    return Deployment.parse(spec, what="quantization_aware", refuse=_QAT_REFUSED)


def _check_writable(directory: Path) -> None:
    """Raise before any training if ``directory`` (or the nearest parent that exists) cannot be written."""
    existing = directory.expanduser()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"`output_dir` {str(directory)!r} cannot be written ({str(existing)!r} is not a writable "
            "directory), so the unlearned weights could not be saved at the end of the fit. Choose another "
            "`model.output_dir`, or leave it unset to save into the run's log directory."
        )


# Paper learning rates: full fine-tuning 1e-5 (P2, MUSE); LoRA 1e-4 and up (P1).
_DEFAULT_LR = {True: 1e-4, False: 1e-5}


def _float_trainable(module: nn.Module) -> None:
    """Keep ``module``'s trainable weights in float32: in bf16 most unlearning updates would round away."""
    for param in module.parameters():
        if param.requires_grad and param.dtype != torch.float32 and not is_sharded(param):
            param.data = param.data.float()


class UnlearningModule(LightningModule):
    """Unlearn a forget set from a causal LM while keeping a retain set.

    ``L = forget_weight · L_forget + retain_weight · L_retain`` where the method names the pair
    (``npo_gdr`` = NPO forget loss + GDR retain term); ``objective`` holds it with the weights and the
    losses' knobs. With ``lora`` set, only a LoRA adapter on the frozen base trains and the reference π_ref
    is the base with the adapter disabled (no copy); with ``lora=None`` every weight trains and a frozen
    reference copy is built only if the objective reads it.

    Args:
        model_name_or_path: Local directory, ``.gguf`` file or hub id of a causal LM (``world:target`` = the
            toy world).
        objective: The method name (see ``lit_unlearn.objectives.METHODS``) with every knob at its default,
            or the method with its knobs (:class:`~lit_unlearn.objectives.ObjectiveSettings`: ``method``;
            ``forget_weight`` γ; ``retain_weight`` α, unset for the paper's value for the method;
            ``npo_beta``, ``npo_form``, ``simnpo_beta``, ``simnpo_delta``, ``klr_form``). YAML:
            ``objective: npo_gdr``, or ``objective: {method: npo_gdr, retain_weight: 1.0}``.
        lora: LoRA settings, or ``None`` for full-parameter unlearning.
        sure_percentile: Full-parameter runs only: SURE's saliency mask (P2). Each step only the weight
            rows whose forget-gradient norm is above this percentile are updated. ``None`` disables it.
        tokenizer: Tokenizer path or hub id, for model repositories that ship none (e.g. MUSE's targets
            use Llama-2's). ``None`` loads it from ``model_name_or_path``.
        dtype: Dtype the model is loaded in. Trainable weights are always kept in float32: in pure bf16
            most unlearning updates would round away before they reach the weights.
        trust_remote_code: Passed to ``from_pretrained``; off unless you trust the model's code.
        output_dir: Where the adapter (or full model) and tokenizer are saved at fit end, as
            safetensors. ``None`` saves into the run's own directory, next to its ``checkpoints/``
            (``<run dir>/adapter`` or ``/model``; for W&B the run dir is ``<save_dir>/<project>/<run id>``).
        log_artifact: Log the saved adapter or model to W&B as a ``model`` artifact; other loggers ignore it.
        optimizer: Optimizer factory (from YAML: ``class_path``/``init_args``). ``None`` uses the papers'
            AdamW, weight decay 0, lr 1e-4 with LoRA and 1e-5 for full-parameter runs.
        lr_scheduler: Scheduler factory; ``None`` keeps the learning rate constant, as the papers do.
        quantization_aware: Quantization-aware unlearning: a scheme name (``"nf4"``), optionally with a
            block size (``"int4:64"``), or a :class:`~lit_unlearn.deployment.Deployment` (in YAML
            ``{precision, block_size, modules}``) to train through a deployment that quantizes only some
            layers. The losses then see the *deployed* model — every linear layer it quantizes (by
            default all but the output head) computing with the fake-quantized merged weight ``Q(W0 + ΔW)`` — and a
            straight-through estimator carries the gradient to the trainable weights or the LoRA factors
            (:mod:`lit_unlearn.deployment.qat`). The NPO/KLR reference stays the full-precision original.
            ``None`` (default) trains the full-precision model, exactly as without the option.
        quantization_aware_retain: With ``quantization_aware``, whether the retain term also sees the
            quantized model (default: the deployment's utility is the one to keep).
        four_bit: QLoRA: load the frozen base in bitsandbytes 4-bit (``Linear4bit``) under the LoRA
            adapter, in this format (:class:`~lit_unlearn.four_bit_base.FourBitBase`: ``quant_type`` ``nf4``,
            QLoRA's, or ``fp4``; ``compute_dtype``, unset for ``dtype``; ``double_quant``, QLoRA's double
            quantization of the block scales). ``four_bit: {}`` is nf4 computing in ``dtype``. The NPO/KLR
            reference is then the 4-bit base, and the callbacks measure the deployment a 4-bit user ships:
            the adapter merged into the dequantized base and re-quantized, as peft's 4-bit merge does. LoRA
            runs only. ``None`` (default) loads the base in ``dtype``.
        quantization_config: The same as a ``transformers.BitsAndBytesConfig`` (or its dict), from Python,
            instead of ``four_bit``.
        gradient_checkpointing: Recompute each decoder block's activations in the backward pass instead of
            keeping them (transformers' non-reentrant checkpointing): about a third more compute for
            activations of one block instead of all, what fits a 7B model's 2048-token batches on one GPU.
            With ``quantization_aware``, each block is recomputed in the mode its forward ran in, so the
            gradients are those without checkpointing.

    Raises:
        ValueError: for an unknown ``objective`` or an invalid knob of it, ``sure_percentile`` outside
            (0, 100) or used with LoRA, an unknown ``quantization_aware`` scheme or block size, a 4-bit base
            without LoRA or with ``quantization_aware``, both ``four_bit`` and ``quantization_config``, or an
            8-bit ``quantization_config``.

    Example::

        from lightning.pytorch import Trainer
        from lit_unlearn import ForgetRetainDataModule, UnlearningModule

        module = UnlearningModule("world:target", objective="npo_gdr")
        Trainer(max_steps=50).fit(module, ForgetRetainDataModule())
    """

    def __init__(
        self,
        model_name_or_path: str = "world:target",
        objective: Method | ObjectiveSettings = "npo_gdr",
        lora: LoRA | None = LoRA(),
        sure_percentile: float | None = None,
        tokenizer: str | None = None,
        dtype: Dtype = "float32",
        trust_remote_code: bool = False,
        output_dir: str | None = None,
        log_artifact: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        quantization_aware: str | Deployment | None = None,
        quantization_aware_retain: bool = True,
        four_bit: FourBitBase | None = None,
        quantization_config: Any = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        #: The deployment quantization-aware unlearning trains through (``None``: plain unlearning).
        self.qat_deployment = _qat_deployment(quantization_aware)
        self.qat_scheme = None if self.qat_deployment is None else self.qat_deployment.scheme
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError(f"`gradient_checkpointing` must be True or False, got {gradient_checkpointing!r}.")
        self.gradient_checkpointing = gradient_checkpointing
        # Its compute dtype resolved to `dtype` when unset: what is loaded and recorded names one.
        self.four_bit_base: FourBitBase | None = four_bit_base(four_bit, quantization_config, dtype=dtype)
        if self.four_bit_base is not None:
            if lora is None:
                raise ValueError(
                    "A 4-bit base (`four_bit`/`quantization_config`) is frozen: only a LoRA adapter can "
                    "train over it (QLoRA), but `lora` is null. Set `lora` (e.g. `lora: {r: 16}`), or drop "
                    "`four_bit` for full-parameter unlearning."
                )
            if quantization_aware is not None:
                raise ValueError(
                    "`quantization_aware` trains through a fake-quantized merge of a full-precision base; with "
                    "`four_bit` the base is already 4-bit. Use one or the other."
                )
        if not isinstance(quantization_aware_retain, bool):
            raise ValueError(f"`quantization_aware_retain` must be True or False, got {quantization_aware_retain!r}.")
        if isinstance(lora, dict):
            lora = LoRA(**lora)
        if sure_percentile is not None:
            if lora is not None:
                raise ValueError(
                    "`sure_percentile` is SURE's mask for full-parameter unlearning, but `lora` is set. "
                    "Set `lora: null` to use SURE, or drop `sure_percentile`."
                )
            if not 0.0 < sure_percentile < 100.0:
                raise ValueError(f"`sure_percentile` must be in (0, 100), got {sure_percentile}; the paper uses 90.")
        # Raises for unknown names, listing METHODS, and invalid knobs before anything is loaded; a
        # `retain_weight` of None takes the paper's value for the method.
        self.objective_settings: ObjectiveSettings = objective_settings(objective)
        self.objective = self.objective_settings.build()
        self.save_hyperparameters(
            ignore=["objective", "optimizer", "lr_scheduler", "lora", "four_bit", "quantization_config"]
        )
        # Recorded as the settings' fields however it was given (a name or the settings): a checkpoint's
        # hparams rebuild the same objective.
        self.hparams["objective"] = asdict(self.objective_settings)
        self.hparams["lora"] = None if lora is None else vars(lora).copy()
        # Recorded as `four_bit`'s fields, its compute dtype resolved, however it was given: a checkpoint's
        # hparams rebuild the module from them.
        self.hparams["four_bit"] = None if self.four_bit_base is None else asdict(self.four_bit_base)
        self.model_name_or_path = model_name_or_path
        self.tokenizer_path = tokenizer
        self.lora = lora
        self.sure_percentile = sure_percentile
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        self.output_dir = output_dir
        self.log_artifact = log_artifact
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model: nn.Module | None = None
        self.reference: nn.Module | None = None
        self.tokenizer: Any = None
        self._sure_masks: dict[str, torch.Tensor] | None = None
        self.quantization_aware_retain = quantization_aware_retain
        self._qat = None if self.qat_scheme is None else QuantizationAwareSwitch(self.qat_scheme)
        # Checkpoints of LoRA runs hold only the adapter (see `on_save_checkpoint`), so loading them
        # must not demand the frozen base weights.
        self.strict_loading = lora is None
        #: Weights `configure_model` rebuilds on resume and checkpoints leave out (read by FSDP2Strategy).
        self.checkpoint_rebuilt_prefixes = ("reference.",)
        self._rng_states: dict[str, Any] | None = None  # from a checkpoint, applied when training starts

    # ------------------------------------------------------------------ properties
    @property
    def method(self) -> str:
        return self.objective_settings.method

    @property
    def needs_retain(self) -> bool:
        """Whether the objective has a retain term (the DataModule then serves retain batches)."""
        return self.objective.retain is not None

    @property
    def tokenizer_name_or_path(self) -> str:
        return self.tokenizer_path or self.model_name_or_path

    # ------------------------------------------------------------------ model
    @override
    def prepare_data(self) -> None:
        # The toy world is prepared once per node, before any process loads the model.
        resolve_path(self.model_name_or_path)

    @override
    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            # FSDP1's and DeepSpeed's flat parameters are not the model's: saving, the reference and the callbacks
            # would read the wrong tensors. FSDP2 shards the same way with the model's own parameters.
            check_strategy(self.trainer.strategy, "UnlearningModule", "shards with FSDP2", allow_fsdp2=True,
                           refusal=_STRATEGY_REFUSAL)
        if stage == "fit" and self.output_dir is not None:
            _check_writable(Path(self.output_dir))
        # Checked here, after the data is known and before `configure_model` loads any weights.
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and self.needs_retain and datamodule is not None and getattr(datamodule, "retain", ()) is None:
            raise ValueError(
                f"Objective {self.method!r} has a retain term but the DataModule has no `retain` set. "
                "Give it one (e.g. `data.retain: retain.jsonl`) or pick a forget-only objective (ga, npo, simnpo)."
            )

    @override
    def configure_model(self) -> None:
        if self.model is not None:
            return
        path = resolve_path(self.model_name_or_path)
        # A `.gguf` file loads dequantized and records its format (`model.gguf_base`); see lit_unlearn.gguf_io.
        model = load_causal_lm(
            path, dtype=getattr(torch, self.dtype_name), trust_remote_code=self.trust_remote_code,
            **self._four_bit_loading(),
        )
        # The stored codes and fp32 scales, on every CPU (see keep_4bit_layout).
        keep_4bit_layout(model)
        if self.gradient_checkpointing:
            kwargs: dict[str, Any] = {"use_reentrant": False}
            if self._qat is not None:
                # Backward re-runs each block after the step's quantization-aware context has closed: the
                # switch's context_fn replays the block as its forward ran (see QuantizationAwareSwitch).
                kwargs["context_fn"] = self._qat.checkpoint_contexts
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.tokenizer = load_tokenizer(
            resolve_path(self.tokenizer_name_or_path), trust_remote_code=self.trust_remote_code
        )
        if self.lora is not None:
            model = apply_lora(model, self.lora)
        elif self.objective.needs_reference:
            # Kept in train mode like the rest of the module (Lightning warns about eval-mode submodules at
            # fit start); `_reference_logits` runs it in eval mode.
            self.reference = copy.deepcopy(model).requires_grad_(False).train()
        mesh = sharding_mesh(self)
        if mesh is None:
            _float_trainable(model)
        else:
            self._check_shardable()
            # FSDP2: every decoder block one unit, each rank holding 1/world of every weight; the frozen
            # reference the same way, never a whole copy per rank. Trainable weights become fp32 one block
            # at a time, just before FSDP2 moves that block's shard to the device: the host never holds
            # the whole model in fp32.
            shard_model(model, mesh, prepare=_float_trainable)
            if self.reference is not None:
                # It only runs forward: its root would otherwise stay gathered after each forward, waiting
                # for a backward that never comes.
                shard_model(self.reference, mesh, reshard_after_forward=True)
        # from_pretrained returns eval mode; training must see dropout (Lightning keeps module modes as found).
        self.model = model.train()
        if self._qat is not None:
            self._qat.layers = self.qat_deployment.layers(self.model)

    def _check_shardable(self) -> None:
        for what, on in (("a 4-bit base (`four_bit`)", self.four_bit_base is not None),
                         ("`quantization_aware`", self.qat_scheme is not None),
                         ("`sure_percentile`", self.sure_percentile is not None)):
            if on:
                raise ValueError(
                    f"UnlearningModule with {what} runs on one device or under DDP; ModelParallelStrategy "
                    "shards the weights it reads whole. Drop it, or use `strategy: ddp`."
                )

    def _four_bit_loading(self) -> dict[str, Any]:
        """``from_pretrained`` arguments of the 4-bit base: its config, and on a GPU the device to quantize on."""
        if self.four_bit_base is None:
            return {}
        kwargs: dict[str, Any] = {"quantization_config": self.four_bit_base.bitsandbytes_config()}
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        if device.type == "cuda":
            # bitsandbytes quantizes on the device the weights are loaded to; a 7B base never exists
            # in 16 bits on the GPU.
            kwargs["device_map"] = {"": device}
        return kwargs

    def _forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # π_ref is the model before unlearning, deterministic: eval mode (no dropout), no gradients.
        if self.reference is not None:
            with eval_mode(self.reference):
                return self._forward(self.reference, batch)
        with reference_mode(self.model), eval_mode(self.model):
            return self._forward(self.model, batch)

    # ------------------------------------------------------------------ steps
    def _deployed(self, on: bool) -> contextlib.AbstractContextManager:
        """The model computing as its quantized deployment (straight-through), when quantization-aware."""
        if self._qat is None:
            return contextlib.nullcontext()
        return self._qat(on)

    def _split_batch(self, batch: Any) -> tuple[dict, dict | None]:
        if isinstance(batch, dict) and "forget" in batch:
            return batch["forget"], batch.get("retain")
        # A plain loader of forget batches (no CombinedLoader): forget-only objectives.
        return batch, None

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        forget, retain = self._split_batch(batch)
        if self.needs_retain and retain is None:
            raise ValueError(
                f"Objective {self.method!r} has a retain term but the batch holds no retain data. Give the "
                "DataModule a `retain` set, or pick a forget-only objective (ga, npo, simnpo)."
            )
        objective = self.objective
        with self._deployed(True):
            forget_logits = self._forward(self.model, forget)
        forget_ref = self._reference_logits(forget) if objective.forget.needs_reference else None
        retain_logits = retain_ref = None
        if objective.retain is not None:
            with self._deployed(self.quantization_aware_retain):
                retain_logits = self._forward(self.model, retain)
            if objective.retain.needs_reference:
                retain_ref = self._reference_logits(retain)
        out = objective(
            forget_logits,
            forget["labels"],
            retain_logits=retain_logits,
            retain_labels=None if retain is None else retain["labels"],
            forget_ref_logits=forget_ref,
            retain_ref_logits=retain_ref,
        )
        self._check_finite(out.loss, out.metrics)
        if self.sure_percentile is not None:
            self._sure_masks = self._saliency_masks(out.forget_loss)

        bs = forget["input_ids"].shape[0]
        # The objective names its terms (forget/loss, forget/nll, forget/log_ratio, retain/nll, ...).
        logs = {"train/loss": out.loss.detach(), **{f"train/{k}": v for k, v in out.metrics.items()}}
        logs["train/lr"] = float(self.optimizers().param_groups[0]["lr"])
        self.log_dict(logs, prog_bar=False, batch_size=bs)
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        return out.loss

    def _check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        # Decided on every rank together, so that under DDP all ranks stop, none waits on the others.
        bad = not bool(torch.isfinite(loss.detach()).all())
        strategy = self.trainer.strategy if self._trainer is not None else None
        if strategy is not None:
            bad = strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        step = self.trainer.global_step + 1 if self._trainer is not None else "?"
        culprits = [f"{k} = {float(v):g}" for k, v in terms.items() if not torch.isfinite(v).all()]
        shown = ", ".join(culprits) or f"loss = {float(loss.detach()):g} (on another rank)"
        raise FloatingPointError(
            f"Non-finite loss at optimizer step {step}: {shown}. Training stopped before the update, so the "
            "weights and the last checkpoint are those of the steps before. Lower the learning rate (or check "
            "the data), then resume from that checkpoint (--ckpt_path last)."
        )

    def _saliency_masks(self, forget_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        # SURE ranks rows by the gradient of the forget loss alone, so it needs its own backward pass.
        # Rows of every trainable tensor compete in one pool, as in P2 (1-D tensors: one row per element).
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(forget_loss, list(params.values()), retain_graph=True, allow_unused=True)
        named = {n: g for n, g in zip(params, grads) if g is not None}
        return sure_row_masks(named, percentile=self.sure_percentile)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._sure_masks is not None:
            trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
            apply_row_masks_(trainable, self._sure_masks)

    def _eval_step(self, batch: dict[str, torch.Tensor], dataloader_idx: int, stage: str) -> None:
        name = ("forget", "retain")[dataloader_idx]
        nll = mean_token_nll(self._forward(self.model, batch), batch["labels"])
        self.log(f"{stage}/{name}_nll", nll, batch_size=batch["input_ids"].shape[0], add_dataloader_idx=False, sync_dist=True)

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    @torch.no_grad()
    def quantization_probe_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean token NLL of ``batch`` under the current weights; the probe of ``QuantizationSurvival``."""
        return mean_token_nll(self._forward(self.model, batch), batch["labels"])

    # ------------------------------------------------------------------ optimizer
    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=_DEFAULT_LR[self.lora is not None], weight_decay=0.0)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------ saving
    def _trainable_names(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Dropout draws from the global RNG: a resumed fit restores it (at `on_train_start`) to continue
        # with the masks an uninterrupted fit would draw. Every rank's state is kept (Lightning writes rank
        # zero's checkpoint, but every rank builds it, so the gather is collective).
        states = get_rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            checkpoint[_RNG_KEY] = {"ranks": gathered}
        else:
            checkpoint[_RNG_KEY] = {"ranks": [states]}
        # A LoRA checkpoint needs only the adapter: the frozen base is reloaded from
        # `model_name_or_path`, so storing it again would multiply checkpoint size for nothing.
        if self.lora is not None:
            keep = self._trainable_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        elif self.reference is not None:
            # The frozen reference is the model as loaded from `model_name_or_path`; `configure_model`
            # rebuilds it on resume, so a checkpoint that stored it would be twice the size for nothing.
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("reference.")}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states = checkpoint.get(_RNG_KEY)
        # Strict loading stays on for the model's weights; the reference comes from `configure_model`.
        state = checkpoint.get("state_dict")  # a sharding strategy has loaded the weights itself by now
        if self.lora is None and self.reference is not None and state is not None:
            for name, tensor in self.reference.state_dict().items():
                state.setdefault(f"reference.{name}", tensor)

    @override
    def on_train_start(self) -> None:
        # After every setup step of a resumed fit (data loaders included), just before its first batch.
        if self._rng_states is not None:
            ranks = self._rng_states["ranks"]
            # This rank's own state; resumed on another number of processes, rank zero's for all.
            rank = self.trainer.global_rank if len(ranks) == self.trainer.world_size else 0
            set_rng_states(ranks[rank])
            self._rng_states = None

    def resolve_output_dir(self) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        base = run_directory(self.trainer) if self._trainer is not None else Path(".")
        return base / ("adapter" if self.lora is not None else "model")

    def save_pretrained(self, directory: str | Path | None = None, state_dict: dict[str, torch.Tensor] | None = None
                        ) -> Path:
        """Save the adapter (LoRA) or the full model, with the tokenizer, as safetensors; return the path.

        ``state_dict``: the weights to write, for a sharded model the result of :meth:`gathered_state_dict`
        (which every rank must call); ``None`` writes the model's own.
        """
        directory = Path(directory) if directory is not None else self.resolve_output_dir()
        state = state_dict

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp, safe_serialization=True, **({} if state is None else {"state_dict": state}))
            self._record_portable_base(tmp)
            if self.four_bit_base is not None:
                self.four_bit_base.write(tmp)
            if (gguf_base := gguf_base_of(self.model)) is not None:
                gguf_base.write(tmp)  # the base's GGUF format, for `lit-unlearn export --gguf base`
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)

        # Saved into a sibling directory and renamed into place: a crash or a full disk mid-save leaves the
        # previous save (or none), never a directory that looks complete.
        return atomic_directory(directory, write)

    def gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        """A sharded model's weights gathered to rank zero (the adapter only, for LoRA), in host RAM.

        Collective: every rank calls it; rank zero gets the state dict, the others an empty one. ``None``
        when the model is not sharded.
        """
        if not any(is_sharded(p) for p in self.model.parameters()):
            return None
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        keep = (lambda name: name in trainable) if self.lora is not None else (lambda name: True)
        return gathered_state_dict(self.model, keep, is_zero=self.trainer.is_global_zero)

    def _record_portable_base(self, directory: Path) -> None:
        # peft records the base as the path it was loaded from: for the toy world an absolute cache path
        # of this machine. `world:target` resolves on any machine (export and peft users pass it through
        # lit_unlearn.data.sources.resolve_path), so the adapter stays portable.
        config_path = directory / "adapter_config.json"
        if self.lora is None or not config_path.is_file() or not self.model_name_or_path.startswith("world:"):
            return
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = self.model_name_or_path
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    @override
    def on_fit_end(self) -> None:
        # `run_directory` is a collective under DDP: every rank resolves the path, rank zero writes.
        path = self.resolve_output_dir()
        run_dir = run_directory(self.trainer)
        # A sharded model is gathered first, one tensor at a time: every rank takes part, rank zero keeps it.
        state = self.gathered_state_dict()
        if self.trainer.is_global_zero:
            self.save_pretrained(path, state_dict=state)
            if self.log_artifact:
                log_adapter_artifact(self.trainer, path, metadata=dict(self.hparams))
            what = "Adapter" if self.lora is not None else "Model"
            rank_zero_info(f"{what} saved to {path}\nRun directory (config, logs, tables, pictures): {run_dir}")
        self.trainer.strategy.barrier("lit_unlearn_save")

