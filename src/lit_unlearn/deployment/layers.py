"""The deployed layer: which linear layers a deployment holds and quantizes, and each one's weight.

A deployment merges the LoRA update into the base and then quantizes every plain ``nn.Linear`` but the
output head (transformers' ``load_in_4bit``/``load_in_8bit``). Everything lit-unlearn measures reads that
weight through :class:`DeployedLayer`:

* its name in the merged model (:func:`deployed_name`: no peft prefix, no ``.base_layer``);
* where ``W0`` comes from (``source``): the frozen base under a LoRA adapter (``"lora"``, never copied), a
  snapshot of a trainable weight (``"snapshot"``, host RAM, or the base read from disk by ``export``), or
  the frozen weight itself (``"frozen"``, which has no update);
* where ``ΔW`` comes from: ``scaling · B @ A`` (:func:`lit_unlearn.adapters.lora_delta`), or ``W − W0``;
* the one merge, :func:`merge`: ``W0 + ΔW`` rounded once to the base's dtype, as peft merges;
* ``Q(W0)`` cached per scheme, and the deployed weight per scheme (:meth:`DeployedLayer.weight`);
* the format it is deployed in under a scheme (:meth:`DeployedLayer.scheme_for`): a GGUF mixture's type
  for this tensor (llama.cpp's rule, from every linear layer's name and shape), a GGUF or round-to-nearest
  scheme fitted to its rows (:func:`~lit_unlearn.quantization.fit_scheme`), resolved once per scheme.

A LoRA layer over a bitsandbytes 4-bit base (QLoRA: ``Linear4bit``, ``base_format`` set) deploys along
peft's 4-bit merge: ``W0`` is the dequantized base (as the CUDA kernel decodes it), the merged weight is
``W0 + ΔW`` in the promoted dtype (peft adds the float32 update to the dequantized weight and hands the
sum to ``Params4bit``, which re-quantizes it), and the deployed weight is that sum re-quantized. In the
base's own format the original deployment is the base itself: ``Q(W0) = W0``.

:func:`deployed_layers` is the one selector of those layers, and :func:`output_head` the one rule for
the layer a deployment keeps in full precision.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

# The naming rules live with the peft seam (below this package), which needs them too.
from lit_unlearn.adapters import (
    adapter_internals,
    check_mergeable,
    deployed_name,
    is_output_head,
    lora_delta,
    lora_layers,
    lora_product,
    output_head,
)
from lit_unlearn.quantization import (
    QuantizedTensor,
    Scheme,
    SurvivalStats,
    default_filter,
    fake_quantize,
    fit_scheme,
    get_scheme,
    quantize,
    survival_stats,
    survival_stats_delta,
)
from lit_unlearn.quantization.bnb_decode import (
    dequantize_params4bit,
    is_params4bit,
    keep_4bit_layout,
    params4bit_format,
    requantized_like,
)
from lit_unlearn.quantization import _fused
from lit_unlearn.quantization.double_quant import double_quant_survival
from lit_unlearn.quantization.functional import codec_for
from lit_unlearn.quantization.gguf_mixture import hf_tensor_types
from lit_unlearn.quantization.merge import merge
from lit_unlearn.sharding import (
    all_reduce_sums,
    full_tensor,
    gather_rows,
    is_sharded,
    local_rows,
    local_tensor,
)

__all__ = [
    "DeployedLayer",
    "MixtureTypes",
    "Modules",
    "Source",
    "deployed_layers",
    "deployed_name",
    "holding_deployed",
    "merge",
    "output_head",
]

Source = Literal["lora", "snapshot", "frozen"]
#: A layer selection: ``None`` (what a deployment quantizes), a regex searched in each deployed name, a
#: list of names (each a full name or its trailing components), or ``filter_fn(name, module) -> bool``.
Modules = None | str | Sequence[str] | Callable[[str, nn.Module], bool]

class MixtureTypes:
    """llama.cpp's type for each linear layer of one model under a GGUF mixture, computed on first use.

    ``shapes`` maps every linear layer's deployed name to its weight's shape: the rule counts the model's
    ``attn_v`` tensors and layers, so the table is one per model, not per layer.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = {f"{name}.weight": shape for name, shape in shapes.items()}
        self._tables: dict[str, dict[str, str]] = {}

    def type_of(self, mixture: str, name: str) -> str | None:
        """The GGUF type of layer ``name`` (``"q6_k"``, ``"q5_0"``, ``"fp16"``), or ``None`` for a name
        that is not a Llama tensor llama.cpp knows (it then gets the mixture's base type)."""
        if mixture not in self._tables:
            self._tables[mixture] = hf_tensor_types(self.shapes, mixture)
        return self._tables[mixture].get(f"{name}.weight")


@dataclass
class DeployedLayer:
    """One linear layer of the deployed model.

    Attributes:
        name: Its name in the merged model (``model.layers.0.self_attn.q_proj``).
        linear: The ``nn.Linear`` holding ``W0`` (a LoRA layer's base layer).
        source: Where ``W0`` and ``ΔW`` come from (see the module docstring).
        lora: The peft LoRA layer wrapping ``linear``, if any.
        quantized: Whether the deployment quantizes it (selected); an unselected LoRA layer is still merged.
        snapshot: ``W0`` of a ``snapshot`` layer (host RAM, or any tensor of the weight's shape).
        reference_codes: ``Q(W0)`` per scheme name, once :meth:`cache_references` ran.
        base_format: The 4-bit format a bitsandbytes ``Linear4bit`` base is stored in (QLoRA), else ``None``.
        mesh: The device mesh of a weight sharded by FSDP2 (``ModelParallelStrategy``), once
            :meth:`cache_references` saw it; a snapshot then holds only this rank's rows.
        mixtures: The table of GGUF mixture types shared by the layers of one model (``None``: the layer
            alone, whose mixtures resolve to their base type).
    """

    name: str
    linear: nn.Linear
    source: Source
    lora: nn.Module | None = None
    quantized: bool = True
    snapshot: torch.Tensor | None = None
    reference_codes: dict[str, QuantizedTensor] = field(default_factory=dict)
    base_format: Scheme | None = None
    mesh: object = None
    mixtures: MixtureTypes | None = field(default=None, repr=False)
    _resolved: dict[Scheme, Scheme] = field(default_factory=dict, init=False, repr=False)
    # Q(merged) per scheme name while :func:`holding_deployed` holds it (``None`` outside).
    _held: dict[str, QuantizedTensor] | None = field(default=None, init=False, repr=False)

    def scheme_for(self, scheme: Scheme) -> Scheme:
        """The format this layer is deployed in under ``scheme``: for ``q4_k_m``/``q5_k_m`` the type
        llama-quantize gives this tensor (``v_proj``/``down_proj`` of some layers ``q6_k``, rows no
        super-block fits their fallback), else :func:`~lit_unlearn.quantization.fit_scheme` of its shape
        (``int4`` at group 128 on 576 columns: group 96). Resolved once per scheme."""
        resolved = self._resolved.get(scheme)
        if resolved is None:
            chosen = None
            if scheme.family == "gguf_mixture" and self.mixtures is not None:
                chosen = self.mixtures.type_of(scheme.name, self.name)
            resolved = fit_scheme(scheme if chosen is None else chosen, self.shape)
            self._resolved[scheme] = resolved
        return resolved

    @property
    def numel(self) -> int:
        return self.linear.weight.numel() if self.base_format is None else self.shape.numel()

    @property
    def shape(self) -> torch.Size:
        """The weight's shape (that of the dequantized weight for a 4-bit base)."""
        weight = self.linear.weight
        return torch.Size(weight.quant_state.shape) if self.base_format is not None else weight.shape

    def _is_base_format(self, scheme: Scheme) -> bool:
        return self.base_format is not None and scheme == self.base_format

    def _double_quant_merge(self, scheme: Scheme | None) -> bool:
        """Whether the deployment re-quantizes this layer with fresh nested scales (a LoRA merge into a
        double-quantized base, in its own format): then ``Q(W0)`` is ``W0`` re-quantized the same way."""
        return (self.lora is not None and self.quantized and scheme is not None and self._is_base_format(scheme)
                and self.linear.weight.quant_state.nested)

    @property
    def forward_module(self) -> nn.Module:
        """The module whose call computes this layer: the LoRA wrapper if any, else the linear layer."""
        return self.lora if self.lora is not None else self.linear

    def w0(self) -> torch.Tensor:
        """``W0`` on the weight's device (a transfer from host RAM for ``snapshot`` layers, the decoded
        weight for a 4-bit base)."""
        weight = self.linear.weight
        if self.base_format is not None:
            return dequantize_params4bit(weight)
        if self.snapshot is not None and self.mesh is not None and not is_sharded(weight):
            # Inside a sharded model's forward the weight is whole; W0 is gathered from every rank's rows.
            return gather_rows(self.snapshot.to(weight.device), weight.shape[0], self.mesh).to(weight.dtype)
        if self.snapshot is None:
            return weight.detach()
        return self.snapshot.to(weight.device, non_blocking=True)

    def delta(self, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """``ΔW``: ``scaling · B @ A`` summed over the active adapters (into ``buffer`` when given, zero when
        none is active) for a LoRA layer, ``W − W0`` for a snapshot, zero for a frozen layer."""
        if self.lora is not None:
            delta = lora_delta(self.lora, out=buffer)
            if delta is None:
                return torch.zeros(self.shape, device=self.linear.weight.device)
            return delta
        if self.snapshot is not None:
            return self.linear.weight.detach().float() - self.w0().float()
        return torch.zeros_like(self.linear.weight)

    def merged(self) -> torch.Tensor:
        """The current full-precision deployed weight: :func:`merge` of ``W0`` and ``ΔW`` for LoRA (read
        while the adapter is active), else the weight itself. Over a 4-bit base, peft's 4-bit merge:
        the dequantized base plus ``ΔW`` in the promoted dtype, the weight it re-quantizes."""
        if self.base_format is not None:
            w0 = self.w0()
            delta = None if self.lora is None else lora_delta(self.lora)
            return w0 if delta is None else w0 + delta
        weight = self.linear.weight.detach()
        if self.lora is None:
            return weight
        delta = lora_delta(self.lora)
        return weight if delta is None else merge(weight, delta)

    def computes_with(self, scheme: Scheme | None) -> Literal["codes", "dense", "weight"]:
        """How this layer computes in the deployment ``scheme``: ``"codes"``, LLM.int8's matmul from its int8
        codes (a selected layer under ``int8``: activations are quantized too); ``"dense"``, a 4-bit base's
        ``Linear4bit`` forward replaced by a dense one over :meth:`weight`; ``"weight"``, its ``nn.Linear``
        with :meth:`weight` swapped in. The one rule of :func:`~lit_unlearn.deployment.deployed_model`'s
        eager and lazy paths."""
        if scheme is not None and scheme.family == "llm_int8" and self.quantized:
            return "codes"
        return "dense" if self.base_format is not None else "weight"

    def weight(self, scheme: Scheme | None, original: bool = False) -> torch.Tensor:
        """The deployed weight: ``Q(merged)`` for the current model, ``Q(W0)`` for the original one.

        ``scheme=None``, or a layer the deployment does not quantize, gives the full-precision weight.
        ``Q(W0)`` decodes the cached codes when there are any (equal to ``fake_quantize(W0)`` exactly).
        """
        if original:
            if self._double_quant_merge(scheme):
                return requantized_like(self.w0(), self.linear.weight)
            if scheme is None or not self.quantized or self._is_base_format(scheme):
                return self.w0()
            cached = self.reference_codes.get(scheme.name)
            if cached is not None:
                return cached.to(self.linear.weight.device).dequantize()
            return fake_quantize(self.w0(), self.scheme_for(scheme))
        if self.lora is None and self._is_base_format(scheme):
            return self.w0()  # a 4-bit base without an adapter is deployed as stored
        compiled = self._compiled_weight(scheme)
        if compiled is not None:
            return compiled  # equal to fake_quantize(merged) exactly
        if self._held is not None and scheme is not None and self.quantized and not self._double_quant_merge(scheme):
            return self.quantized_weight(scheme).dequantize()  # equal to fake_quantize(merged) exactly
        return self.deploy(self.merged(), scheme)

    def _compiled_weight(self, scheme: Scheme | None) -> torch.Tensor | None:
        """``Q(merged)`` of a dense layer by one compiled pass that merges, quantizes and decodes (a CPU weight
        of at least :data:`~lit_unlearn.quantization._fused.MIN_ELEMENTS` weights under nf4/fp4, RTN or a
        legacy GGUF format), or ``None`` where it does not apply.

        Faster than quantizing to codes and decoding them (4x for nf4 on SmolLM2), so even a probe's
        every forward pass may form its deployed weights this way; no codes are kept.
        """
        if scheme is None or not self.quantized or self.base_format is not None or self.mesh is not None:
            return None
        weight = self.linear.weight.detach()
        fitted = self.scheme_for(scheme)
        if fitted.family not in ("bnb4", "rtn", "gguf") or weight.device.type != "cpu" or weight.numel() < _fused.MIN_ELEMENTS:
            return None  # small layers stay eager, as the survival check's (compiling costs more than it saves)
        delta = None if self.lora is None else lora_delta(self.lora)
        return _fused.fake_quantize_merged(weight, delta, fitted, codec_for(fitted, weight.device).group_len(weight.shape))

    def deploy(self, weight: torch.Tensor, scheme: Scheme | None) -> torch.Tensor:
        """``weight``, a full-precision weight of this layer (its merge, or one changed after the merge), as
        the deployment ``scheme`` holds it."""
        if self._double_quant_merge(scheme):
            # Double quantization stores the block scales in 8 bits too: re-quantized by bitsandbytes itself,
            # as peft's merge re-quantizes, and decoded.
            return requantized_like(weight, self.linear.weight)
        return weight if scheme is None or not self.quantized else fake_quantize(weight, self.scheme_for(scheme))

    def quantized_weight(self, scheme: Scheme, original: bool = False) -> QuantizedTensor:
        """The codes and scales of :meth:`weight` (a selected layer): ``Q(merged)``, or ``Q(W0)``."""
        if original:
            cached = self.reference_codes.get(scheme.name)
            if cached is not None:
                return cached.to(self.linear.weight.device)
            return quantize(self.w0(), self.scheme_for(scheme))
        if self._held is None:
            return quantize(self.merged(), self.scheme_for(scheme))
        held = self._held.get(scheme.name)
        if held is None:
            held = self._held[scheme.name] = quantize(self.merged(), self.scheme_for(scheme)).to("cpu")
        return held.to(self.linear.weight.device)

    @torch.no_grad()
    def cache_references(self, schemes: Sequence[Scheme], snapshot: torch.Tensor | None = None) -> None:
        """Keep ``W0`` (a host copy, for trainable layers) and ``Q(W0)`` per scheme in host RAM.

        ``snapshot`` is a saved ``W0`` (from a checkpoint); without one, or with another shape, a trainable
        layer copies its current weight.
        """
        if self.source == "frozen":
            return
        weight = self.linear.weight.detach()
        if is_sharded(weight):
            # FSDP2: this rank keeps W0 of its own rows only; Q(W0) is formed at each check, from the rows
            # (or the gathered layer) the check quantizes.
            self.mesh = weight.device_mesh
            if self.source == "snapshot":
                local = local_tensor(weight)
                start, stop = local_rows(weight)
                # A saved snapshot is the whole W0 (see `whole_snapshot`): this rank keeps its rows.
                saved = snapshot[start:stop] if snapshot is not None and snapshot.shape == weight.shape else local
                self.snapshot = torch.empty(local.shape, dtype=local.dtype, pin_memory=local.device.type == "cuda")
                self.snapshot.copy_(saved)
            return
        if self.base_format is not None:
            # Q(W0) in any scheme is computed from the decoded base; in the base's own format it is the
            # base's codes (re-quantizing a decoded 4-bit weight with its format gives it back).
            w0 = self.w0()
            self.reference_codes = {s.name: quantize(w0, self.scheme_for(s)).to("cpu") for s in schemes}
            return
        if self.source == "snapshot":
            saved = snapshot if snapshot is not None and snapshot.shape == weight.shape else weight
            # Pinned host memory makes the per-check transfer back to an accelerator asynchronous.
            host = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=weight.device.type == "cuda")
            self.snapshot = host.copy_(saved)
        w0 = self.w0()
        self.reference_codes = {s.name: quantize(w0, self.scheme_for(s)).to("cpu") for s in schemes}

    def hold_original(self, w0: torch.Tensor | None) -> None:
        """Keep a host copy of ``w0`` as this layer's ``W0`` (``None`` drops it): the weight a callback that
        keeps the update inside quantization cells measures against, restored from a checkpoint or taken now."""
        self.snapshot = None if w0 is None else w0.to("cpu", copy=True)

    @contextlib.contextmanager
    def measured_against(self, w0: torch.Tensor) -> Iterator[DeployedLayer]:
        """Within the context this layer's ``W0`` is ``w0`` (another model's weight of its shape, e.g. a base
        read from disk one layer at a time), and ``ΔW = W − w0``; the layer is as before on exit."""
        source, snapshot = self.source, self.snapshot
        self.source, self.snapshot = "snapshot", w0
        try:
            yield self
        finally:
            self.source, self.snapshot = source, snapshot

    def survival(self, schemes: Sequence[Scheme], buffer: torch.Tensor | None = None) -> dict[str, SurvivalStats]:
        """Weight-space statistics of ``Q(merged) − Q(W0)`` against ``ΔW`` under each scheme.

        For LoRA the merged weight is formed chunk by chunk, rounded once to the base dtype as
        :func:`merge` does, so no weight-sized temporary exists besides ``ΔW`` (in ``buffer`` when given).
        Over a 4-bit base the decoded ``W0`` goes in ``buffer``'s second ``numel`` elements when it has them
        (:func:`~lit_unlearn.survival.layers.delta_buffer` sizes it so).
        """
        if is_sharded(self.linear.weight):
            return self._sharded_survival(schemes)
        codes = self.reference_codes
        if self.base_format is not None:
            # peft's 4-bit merge sums in the promoted dtype (float32 for a float32 adapter): W0 is taken
            # in that dtype, so the streamed merge rounds to it exactly as peft's sum does.
            n = self.numel
            delta = self.delta(None if buffer is None else buffer[:n])
            stored = self.linear.weight.quant_state.dtype
            spare = buffer[n:2 * n] if buffer is not None and buffer.numel() >= 2 * n else None
            w0 = dequantize_params4bit(self.linear.weight, widen_to=torch.promote_types(stored, delta.dtype), out=spare)
            # Fresh nested scales on both sides (see quantization.double_quant), never against the stored base.
            return {s.name: double_quant_survival(w0, w0 + delta, s.name, s.block_size) if self._double_quant_merge(s)
                    else survival_stats_delta(w0, delta, self.scheme_for(s), reference=codes.get(s.name))
                    for s in schemes}
        if self.lora is not None:
            w0, delta = self.linear.weight.detach(), self.delta(buffer)
            return {s.name: survival_stats_delta(w0, delta, self.scheme_for(s), reference=codes.get(s.name))
                    for s in schemes}
        w0, w1 = self.w0(), self.linear.weight.detach()
        return {s.name: survival_stats(w0, w1, self.scheme_for(s), reference=codes.get(s.name)) for s in schemes}


    def measured_per_rank(self, scheme: Scheme) -> bool:
        """Whether a sharded layer's statistics under ``scheme`` come from each rank's own rows (its shards
        are whole quantization blocks) rather than from the gathered layer; ``False`` when not sharded."""
        if self.mesh is None:
            return False
        weight = self.linear.weight
        return _rows_hold_whole_blocks(self.scheme_for(scheme), weight.shape[0], weight.numel() // weight.shape[0],
                                       self.mesh.size())

    def whole_snapshot(self) -> torch.Tensor | None:
        """The snapshot of ``W0`` as a whole weight, for a checkpoint: gathered from every rank's rows when
        the weight is sharded (a collective), else as kept."""
        if self.snapshot is None or self.mesh is None:
            return self.snapshot
        return gather_rows(self.snapshot, self.linear.weight.shape[0], self.mesh)

    def _sharded_survival(self, schemes: Sequence[Scheme]) -> dict[str, SurvivalStats]:
        """:meth:`survival` of a weight sharded by rows (FSDP2), equal to the unsharded statistics.

        Where every rank's rows hold whole quantization blocks (always for row-wise and per-row-group
        schemes; for nf4/fp4 when a shard is a whole number of blocks), each rank measures its own rows and
        the sums are reduced over the mesh. Otherwise the layer alone is gathered and every rank measures
        it whole. Either way no rank holds more than one layer gathered. Collective: every rank calls it
        for the same layers in the same order.
        """
        whole = {s.name: self.measured_per_rank(s) for s in schemes}
        out: dict[str, SurvivalStats] = {}
        local = [s for s in schemes if whole[s.name]]
        if local:
            measure = self._measure(gathered=False)
            for s in local:
                out[s.name] = _reduced(measure(s), self.mesh)
        gathered = [s for s in schemes if not whole[s.name]]
        if gathered:
            measure = self._measure(gathered=True)
            for s in gathered:
                out[s.name] = measure(s)
        return {s.name: out[s.name] for s in schemes}

    def _measure(self, gathered: bool) -> Callable[[Scheme], SurvivalStats]:
        """The statistics of this rank's rows, or of the gathered layer (a collective), per scheme."""
        take = full_tensor if gathered else local_tensor
        weight = take(self.linear.weight.detach())
        # Every gather happens before any rank may stop early: collectives are called by all or none.
        if self.lora is not None:
            delta = self._lora_delta(lambda t: take(t.detach()), weight)
        else:
            w0 = self.snapshot.to(weight.device)
            if gathered:
                w0 = gather_rows(w0, weight.shape[0], self.mesh)
        if weight.numel() == 0:
            return lambda scheme: SurvivalStats()  # a rank past the last row holds nothing
        if self.lora is not None:
            return lambda scheme: survival_stats_delta(weight, delta, self.scheme_for(scheme))
        return lambda scheme: survival_stats(w0, weight, self.scheme_for(scheme))

    def _lora_delta(self, rows_of: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """``Σ scaling · B @ A`` over the active adapters, with ``B``'s rows taken by ``rows_of`` and ``A``
        gathered whole (it is ``r × in``: small)."""
        lora = self.lora
        active = [a for a in lora.active_adapters if a in lora.lora_A] if not lora.disable_adapters else []
        if not active:
            return torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        return lora_product((full_tensor(lora.lora_A[adapter].weight.detach()).float(),
                             rows_of(lora.lora_B[adapter].weight).float(), lora.scaling[adapter]) for adapter in active)


@contextlib.contextmanager
def holding_deployed(layers: Sequence[DeployedLayer]) -> Iterator[None]:
    """Within the context, each layer quantizes its current merged weight once per scheme and keeps the codes.

    :meth:`DeployedLayer.weight` and :meth:`DeployedLayer.quantized_weight` of the current model then decode
    (or return) the kept ``Q(merged)``, so several forward passes over the deployed model (a probe's forget
    and retain batches, a held-out probe) quantize each layer once, not once per pass. The codes (1 byte per
    weight, plus the scales) are kept in host RAM, as the cached ``Q(W0)`` are, until the context exits; the
    weights must not change inside it. Not reentrant.
    """
    for layer in layers:
        layer._held = {}
    try:
        yield
    finally:
        for layer in layers:
            layer._held = None


def _rows_hold_whole_blocks(scheme: Scheme, rows: int, cols: int, world: int) -> bool:
    """Whether every rank's rows of a ``rows × cols`` weight (``ceil(rows / world)`` per rank) are whole
    blocks of ``scheme``: nf4/fp4 cut the flattened weight into blocks, every other scheme works per row."""
    if scheme.family != "bnb4":
        return True
    per_rank = -(-rows // world)
    return (per_rank * cols) % scheme.block_size == 0


_SUMMED = ("numel", "n_changed", "n_below_half_step", "dot", "delta_sq", "qdelta_sq", "residual_sq")


def _reduced(stats: SurvivalStats, mesh: object) -> SurvivalStats:
    """``stats`` summed over the ranks of ``mesh`` (every field is a sum over weights)."""
    sums = all_reduce_sums([float(getattr(stats, f)) for f in _SUMMED], mesh)
    values = {f: (round(v) if isinstance(getattr(stats, f), int) else v) for f, v in zip(_SUMMED, sums)}
    return SurvivalStats(**values)


def _matcher(modules: Modules, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    if modules is None:
        head = output_head(model)
        # A bitsandbytes 4-bit base (QLoRA) is one a deployment quantizes, in its own format.
        return lambda name, module: not is_output_head(name, module, head) and (
            default_filter(name, module) or is_params4bit(module.weight))
    if callable(modules):
        return modules
    if isinstance(modules, str):
        pattern = re.compile(modules)
        return lambda name, module: pattern.search(name) is not None
    wanted = tuple(modules)
    return lambda name, module: any(name == w or name.endswith("." + w) for w in wanted)


def deployed_layers(model: nn.Module, modules: Modules = None) -> list[DeployedLayer]:
    """The linear layers of the deployed ``model`` that matter to a measurement, in ``named_modules`` order:
    every layer ``modules`` selects for quantization, and every LoRA layer (merged, quantized or not).

    Adapter matrices are not layers of a deployed model, and already-quantized layers (bitsandbytes'
    ``Linear4bit`` holds uint8 weights) have nothing left to quantize; both are skipped.

    Raises:
        ValueError: for a LoRA layer merged in place (its adapter cannot be switched off without changing
            the weights), a DoRA adapter (its merge is not ``W0 + ΔW``), or a LoRA layer whose base weight
            is trainable (``W0`` must be the frozen base).
    """
    owners = {id(layer.get_base_layer()): (name, layer) for name, layer in lora_layers(model)}
    keep_4bit_layout(model)  # decoded 4-bit bases must stay the stored weights on every CPU
    internal = adapter_internals(model)
    matches = _matcher(modules, model)
    # Every linear layer's shape, selected or not: a GGUF mixture's rule reads the whole model.
    mixtures = MixtureTypes({
        deployed_name(n): tuple(m.weight.quant_state.shape if is_params4bit(m.weight) else m.weight.shape)
        for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in internal
    })
    layers: list[DeployedLayer] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or id(module) in internal:
            continue
        owner = owners.get(id(module))
        four_bit = is_params4bit(module.weight)
        if not module.weight.is_floating_point() and not four_bit:
            continue
        name = deployed_name(module_name)
        selected = bool(matches(name, module))
        base_format = get_scheme(*params4bit_format(module.weight)) if four_bit else None
        if owner is None:
            if selected:
                source: Source = "snapshot" if module.weight.requires_grad else "frozen"
                layers.append(DeployedLayer(name, module, source, base_format=base_format, mixtures=mixtures))
            continue
        lora_name, lora = owner
        if getattr(lora, "merged", False):
            raise ValueError(
                f"LoRA layer {lora_name!r} is merged into its base weight in place, so the adapter cannot be "
                "disabled without changing the weights. Call `model.unmerge_adapter()` first, or measure the "
                "merged model (`merge_and_unload()`) as a plain model."
            )
        check_mergeable(lora, name)
        if module.weight.requires_grad:
            raise ValueError(
                f"Layer {name!r} has a LoRA adapter but its base weight is trainable. The deployed weight is "
                "W0 + scaling·B·A over a frozen base W0; freeze the base weights."
            )
        layers.append(DeployedLayer(name, module, "lora", lora=lora, quantized=selected, base_format=base_format,
                                    mixtures=mixtures))
    return layers
