"""``lit-unlearn export``: merge an unlearning adapter into its base for deployment, and say what 4-bit keeps.

P1's protocol merges the LoRA adapter into the base weights (``merge_and_unload``) before post-training
quantization, so a deployment serves ``Q(W0 + ΔW)``. This command writes that merged model as safetensors
and, next to it, the survival statistics of every updated layer under each scheme (``survival.json``,
``survival.md``): the share of quantization codes the update flips, the share of it below half a step,
and how much of it ``Q(W0 + ΔW) - Q(W0)`` still carries (``retained``, ``cosine``, ``rel_error``; see
:mod:`lit_unlearn.quantization.survival`). The statistics explain, they are no verdict: whether the
forgetting survives is measured functionally (``QuantizedEvaluation``).

Statistics stream one layer at a time through :class:`lit_unlearn.deployment.DeployedLayer`: for an
adapter, ``ΔW`` is read before the merge and the merged weight formed as peft forms it (the float32 update
added to the base and rounded once to its dtype), so the statistics describe exactly the weights written;
for a full-parameter model, each base weight is read on its own from the base's safetensors files. No
second copy of the model is built.

An adapter trained over a 4-bit base (QLoRA; its directory holds ``base_quantization.json``) is exported
along that deployment: the base is loaded in its 4-bit format, ``W0`` is the decoded base, and the export
writes the merged model in full precision (the decoded base plus ``ΔW``) and, in ``<output_dir>/nf4`` (the
base's format), the merge re-quantized as peft's 4-bit merge writes it
(:func:`lit_unlearn.deployment.four_bit.requantize_merged_`).

With ``gguf`` (``--gguf FORMAT``) the merged model is also written as one llama.cpp file,
``<output_dir>/model.<format>.gguf`` (:func:`lit_unlearn.gguf_io.write_gguf`), in a GGUF type (``q4_1``,
``q4_k``...), a K mixture (``q4_k_m``), ``f16``/``f32``, or ``base``: the format the base was stored in when
it was a ``.gguf`` file (SmolLM2's ``q4_1``), the deployment whose grid the base already sits on. The
survival report then covers that format. A base may itself be a ``.gguf`` file: its metadata (tokenizer,
chat template, hyper-parameters) is copied into the exported file.

Example::

    lit-unlearn export logs/adapter merged/ --quantize nf4
    lit-unlearn export logs/adapter merged/ --gguf base         # a .gguf base, re-quantized to its own format
    lit-unlearn export logs/model merged/ --base world:target   # full-parameter unlearning
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_unlearn.adapters import load_adapter, lora_delta, merge_adapter
from lit_unlearn.data.sources import resolve_path
from lit_unlearn.deployment import FULL, DeployedLayer, Deployment, deployed_layers
from lit_unlearn.deployment.bitsandbytes import bitsandbytes_config
from lit_unlearn.deployment.config import unsupported
from lit_unlearn.deployment.four_bit import dequantized_merged_state, requantize_merged_
from lit_unlearn.four_bit_base import FourBitBase, read_four_bit_base
from lit_unlearn.gguf_io import (
    GGUF_EXPORT_FORMATS,
    GGUFBase,
    gguf_base_of,
    is_gguf,
    load_causal_lm,
    load_tokenizer,
    read_gguf_base,
    write_gguf,
)
from lit_unlearn.quantization import SCHEMES, Scheme, SurvivalStats, get_scheme
from lit_unlearn.quantization.bnb_decode import cpu_deviation, cpu_has_avx512, keep_4bit_layout

__all__ = ["GGUF_EXPORT_FORMATS", "QUANTIZE_CHOICES", "ExportReport", "export", "main"]

Quantize = Literal["none", "full", "nf4", "fp4", "int8"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# The formats bitsandbytes stores a copy in (at its fixed block 64), and "full" for none. "none", the word
# this command used first, is kept as an alias of "full" (README: `--quantize none`).
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "full", "nf4", "fp4", "int8")
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
# The two 4-bit formats of P1's deployments (fp4 in its first runs, nf4 later).
DEFAULT_SCHEMES: tuple[str, ...] = ("nf4", "fp4")


@dataclass
class ExportReport:
    """What an export wrote, and the survival statistics of the exported weights per scheme.

    Attributes:
        source: The adapter or model directory that was exported.
        base: The base model the statistics compare against (``W0``).
        kind: ``lora`` (an adapter merged into ``base``) or ``full`` (a full-parameter model).
        output_dir: Where the merged model, its tokenizer and the reports were written.
        quantized_dir: Where the bitsandbytes-quantized copy was written, or ``None``.
        quantize: The bitsandbytes format of ``quantized_dir`` (``none`` if there is none).
        layers: ``scheme → layer name → SurvivalStats`` for each updated linear layer, in model order.
            Names are those of the merged model (``model.layers.0.self_attn.q_proj``).
        worst: How many layers :meth:`worst_layers` lists by default.
        avx512_misdecoded: Layers of the 4-bit copy whose rows are not whole blocks: bitsandbytes 0.50's
            AVX-512 CPU kernel decodes them with other blocks' scales (a GPU decodes them right; see
            :mod:`lit_unlearn.quantization.bnb_decode`). Empty for int8 and block-aligned models.
        base_quantization: The 4-bit format of a QLoRA adapter's base (``nf4``), else ``None``: ``W0`` is
            then the decoded 4-bit base and ``quantized_dir`` the merge re-quantized to that format.
        gguf_file: The llama.cpp file written with ``gguf``, or ``None``.
        gguf_format: Its format (``q4_1``; ``base`` resolved to the base's), or ``None``.
        gguf_tensor_types: GGUF tensor name → the type it is stored in, in ``gguf_file``.
    """

    source: str
    base: str
    kind: Literal["lora", "full"]
    output_dir: str
    quantized_dir: str | None
    quantize: str
    layers: dict[str, dict[str, SurvivalStats]] = field(default_factory=dict)
    worst: int = 5
    avx512_misdecoded: list[str] = field(default_factory=list)
    base_quantization: str | None = None
    gguf_file: str | None = None
    gguf_format: str | None = None
    gguf_tensor_types: dict[str, str] = field(default_factory=dict)

    @property
    def schemes(self) -> list[str]:
        return list(self.layers)

    def total(self, scheme: str) -> SurvivalStats:
        """All layers pooled, as if their weights formed one vector."""
        return SurvivalStats.aggregate(self.layers[scheme].values())

    def worst_layers(self, scheme: str, k: int | None = None) -> list[tuple[str, SurvivalStats]]:
        """The ``k`` layers whose quantized update keeps the least of ``ΔW``'s direction (lowest cosine).

        The cosine is the ranking key because ``retained`` stays near 1 when a few flipped codes carry the
        update on average, while the cosine falls as rounding noise swamps it. Layers with ``ΔW = 0`` have
        nothing to keep and are left out.
        """
        updated = [(name, s) for name, s in self.layers[scheme].items() if s.delta_sq > 0]
        ranked = sorted(updated, key=lambda item: (item[1].cosine, item[1].retained))
        return ranked[: self.worst if k is None else k]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: the export's paths and, per scheme, the pooled ``total``, the worst and all layers."""
        return {
            "source": self.source,
            "base": self.base,
            "kind": self.kind,
            "output_dir": self.output_dir,
            "quantized_dir": self.quantized_dir,
            "quantize": self.quantize,
            "avx512_misdecoded": list(self.avx512_misdecoded),
            "base_quantization": self.base_quantization,
            "gguf_file": self.gguf_file,
            "gguf_format": self.gguf_format,
            "gguf_tensor_types": dict(self.gguf_tensor_types),
            "schemes": {
                scheme: {
                    "total": {"layers": len(layers), **self.total(scheme).as_dict()},
                    "worst_layers": [{"layer": name, **s.as_dict()} for name, s in self.worst_layers(scheme)],
                    "layers": {name: s.as_dict() for name, s in layers.items()},
                }
                for scheme, layers in self.layers.items()
            },
        }

    def to_markdown(self) -> str:
        if self.kind == "lora" and self.base_quantization is not None:
            what = f"adapter `{self.source}` merged into the decoded {self.base_quantization} (QLoRA)"
        elif self.kind == "lora":
            what = f"adapter `{self.source}` merged into"
        else:
            what = f"full-parameter model `{self.source}` against"
        n_layers = len(next(iter(self.layers.values()), {}))
        lines = [
            f"# What quantization keeps of the unlearning update in `{self.output_dir}`",
            "",
            f"{what} base `{self.base}`; {n_layers} updated linear layers.",
        ]
        if self.quantized_dir is not None and self.base_quantization is not None:
            lines.append(f"The merge re-quantized to {self.quantize}, as peft's 4-bit merge writes it: "
                         f"`{self.quantized_dir}`.")
        elif self.quantized_dir is not None:
            lines.append(f"bitsandbytes {self.quantize} copy: `{self.quantized_dir}`.")
        if self.gguf_file is not None:
            lines.append(f"llama.cpp file ({self.gguf_format}): `{self.gguf_file}`.")
        if self.avx512_misdecoded:
            lines.append(_avx512_note(self.quantize, self.avx512_misdecoded))
        lines += ["", _table_header("scheme")]
        lines += [_table_row(scheme, self.total(scheme)) for scheme in self.layers]
        for scheme in self.layers:
            worst = self.worst_layers(scheme)
            if worst:
                lines += ["", f"## {scheme}: the {len(worst)} layers keeping the least (lowest cosine)", ""]
                lines += [_table_header("layer"), *(_table_row(f"`{name}`", s) for name, s in worst)]
        lines += [
            "",
            "changed: share of quantization codes the update flips. below ½ step: share of the update "
            "smaller than half a quantization step. retained: ⟨Q(W0+ΔW)−Q(W0), ΔW⟩/‖ΔW‖². cosine and "
            "rel. error compare Q(W0+ΔW)−Q(W0) with ΔW (signal against rounding noise). retained ≈ 1 with "
            "few codes changed means the flipped codes carry the update on average; a low cosine means "
            "4-bit adds noise to it. Whether the forgetting survives is a functional question: evaluate the "
            "quantized model (QuantizedEvaluation).",
            "",
        ]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``survival.json`` and ``survival.md`` into ``directory``; return both paths."""
        directory = Path(directory)
        json_path, md_path = directory / "survival.json", directory / "survival.md"
        json_path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path


def _table_header(first: str) -> str:
    columns = ("changed", "below ½ step", "retained", "cosine", "rel. error", "‖ΔW‖")
    return f"| {first} | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|"


def _table_row(label: str, s: SurvivalStats) -> str:
    return (
        f"| {label} | {s.changed:.1%} | {s.below_half_step:.1%} | {s.retained:.3f} | {s.cosine:.3f} "
        f"| {s.rel_error:.3f} | {s.delta_norm:.3g} |"
    )


# ---------------------------------------------------------------------- checks before loading
def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ValueError(f"`{name}`={value!r} is not supported; choose one of {allowed}.")


def _check_quantize(quantize: str) -> str:
    """``quantize`` parsed by :meth:`Deployment.parse`: the bitsandbytes format of the copy, or ``"none"``."""
    deployment = Deployment.parse(FULL if quantize == "none" else quantize, what="quantize")
    if deployment.precision not in QUANTIZE_CHOICES or deployment.block_size is not None:
        raise unsupported("quantize", quantize, QUANTIZE_CHOICES, " (bitsandbytes stores these, at block 64)")
    return "none" if deployment.scheme is None else deployment.precision


def _check_schemes(schemes: Sequence[str | Deployment], quantize: str) -> list[Scheme]:
    """The schemes to report: names (each at its default block size, or ``"name:block"``) or Deployments."""
    listed = [schemes] if isinstance(schemes, (str, Deployment)) else list(schemes)
    for item in listed:
        if isinstance(item, Deployment) and item.modules is not None:
            raise ValueError(
                f"`schemes` holds {item} with `modules`: export reports every layer the deployment quantizes. "
                "Leave the Deployment's `modules` unset."
            )
    refuse = {FULL: "the report measures what quantization keeps of the update; name a scheme such as 'nf4'."}
    # A Scheme is already resolved (its block size, None = one scale per row for RTN, is kept as it is).
    resolved = [item if isinstance(item, Scheme) else Deployment.parse(item, what="schemes", refuse=refuse).scheme
                for item in listed]
    # The format the copy is saved in is always reported: it is the one that will be deployed.
    if quantize != "none" and quantize not in {s.name for s in resolved}:
        resolved.append(get_scheme(quantize))
    if not resolved:
        allowed = ", ".join(map(repr, SCHEMES))
        raise ValueError(f"`schemes` is empty; give at least one of {allowed}, e.g. nf4 fp4.")
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"`schemes`={names} names a scheme twice; list each once.")
    return resolved


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def _read_adapter_config(directory: Path) -> dict[str, Any]:
    config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ValueError(
            f"{str(directory)!r} holds a {peft_type} adapter; export merges LoRA adapters only (what "
            "UnlearningModule trains). Merge it with peft's own `merge_and_unload` instead."
        )
    if config.get("use_dora"):
        raise ValueError(
            f"{str(directory)!r} holds a DoRA adapter (`use_dora: true`): its merged weight is "
            "m · (W0 + ΔW) / ‖W0 + ΔW‖, not W0 + ΔW, which export's statistics describe. Merge it with peft's "
            "`merge_and_unload`, save the merged model, and export that as a full-parameter model with `--base`."
        )
    return config


def _resolve_inputs(adapter_or_model: str, base: str | None) -> tuple[Path, Literal["lora", "full"], str]:
    source = Path(resolve_path(adapter_or_model)).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(
            f"Adapter or model directory {adapter_or_model!r} does not exist. Pass the directory "
            "UnlearningModule saved at fit end (`<log_dir>/adapter` for LoRA, `<log_dir>/model` for "
            "full-parameter runs, or its `output_dir`)."
        )
    if (source / "adapter_config.json").is_file():
        config = _read_adapter_config(source)
        base = base or config.get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{str(source / 'adapter_config.json')!r} names no `base_model_name_or_path`; pass the base "
                "model the adapter was trained on with `base` (`--base PATH_OR_HUB_ID`)."
            )
        kind: Literal["lora", "full"] = "lora"
    elif (source / "config.json").is_file():
        if base is None:
            raise ValueError(
                f"{str(source)!r} is a full model (no adapter_config.json), which records no base model. "
                "Pass the model it was unlearned from with `base` (`--base PATH_OR_HUB_ID`) to compare its "
                "weights."
            )
        kind = "full"
    else:
        raise FileNotFoundError(
            f"{str(source)!r} holds neither adapter_config.json (a LoRA adapter) nor config.json (a model). "
            "Pass the directory UnlearningModule.save_pretrained wrote."
        )
    resolved_base = resolve_path(base)
    if is_gguf(resolved_base):
        if not Path(resolved_base).expanduser().is_file():
            raise FileNotFoundError(
                f"Base GGUF file {resolved_base!r} does not exist. Pass the .gguf the model was trained from with "
                "`base` (`--base`)."
            )
    elif _looks_local(resolved_base) and not Path(resolved_base).expanduser().is_dir():
        raise FileNotFoundError(
            f"Base model directory {resolved_base!r} does not exist. Pass the base with `base` (`--base`): a "
            "local model directory, a .gguf file, a hub id, or world:target."
        )
    return source, kind, resolved_base


def _prepare_output(output_dir: str | Path, source: Path, overwrite: bool) -> Path:
    out = Path(output_dir).expanduser()
    if out.resolve() == source.resolve():
        raise ValueError(
            f"`output_dir` {str(out)!r} is the input directory; write the merged model somewhere else."
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"`output_dir` {str(out)!r} is a file; give a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"`output_dir` {str(out)!r} exists and is not empty; pass `overwrite=True` (`--overwrite`) to "
            "write into it, or choose a new directory."
        )
    return out


# ---------------------------------------------------------------------- statistics
def _avx512_misdecoded(model: nn.Module, quantize: str) -> list[str]:
    """The deployed layers an AVX-512 CPU running bitsandbytes 0.50 decodes with wrong block scales."""
    if quantize not in ("nf4", "fp4"):
        return []
    block = get_scheme(quantize).block_size
    return [
        layer.name for layer in deployed_layers(model)
        if cpu_deviation(layer.linear.weight.shape, block, quantize, avx512=True) == "scales"
    ]


def _avx512_note(quantize: str, layers: list[str]) -> str:
    shown = ", ".join(f"`{name}`" for name in layers[:3])
    if len(layers) > 3:
        shown += f" and {len(layers) - 3} more"
    return (
        f"Running the {quantize} copy on a CPU with AVX-512: bitsandbytes 0.50 decodes {len(layers)} layers "
        f"({shown}) with other blocks' scales, because their rows are not whole blocks of 64; a GPU decodes "
        "them right. Compute with this copy on a GPU, or on a CPU without AVX-512."
    )


def _layer_stats(layer: DeployedLayer, schemes: list[Scheme]) -> dict[str, SurvivalStats]:
    stats = {}
    for scheme in schemes:
        try:
            stats.update(layer.survival([scheme]))
        except ValueError as err:
            raise ValueError(
                f"Scheme {scheme.name!r} cannot be applied to layer {layer.name!r}: {err} Drop it from `schemes`."
            ) from err
    return stats


def _collect(layers: dict[str, dict[str, SurvivalStats]], name: str, stats: dict[str, SurvivalStats]) -> None:
    for scheme, value in stats.items():
        layers[scheme][name] = value


@torch.no_grad()
def _lora_statistics(
    peft_model: nn.Module, schemes: list[Scheme], progress: bool
) -> dict[str, dict[str, SurvivalStats]]:
    """Statistics of each adapted layer's deployed weight, the merge :func:`lit_unlearn.deployment.merge`
    describes (the one ``merge_and_unload`` writes)."""
    layers: dict[str, dict[str, SurvivalStats]] = {scheme.name: {} for scheme in schemes}
    adapted = [layer for layer in deployed_layers(peft_model) if layer.source == "lora"]
    for layer in tqdm(adapted, desc="Survival statistics", unit="layer", disable=not progress):
        if layer.lora is not None and lora_delta(layer.lora) is None:
            continue  # no active adapter: nothing was merged into this layer
        _collect(layers, layer.name, _layer_stats(layer, schemes))
    return layers


class _SafetensorsWeights:
    """Read single tensors of a (possibly sharded) safetensors model on demand."""

    def __init__(self, model: str) -> None:
        from safetensors import safe_open

        directory = Path(model).expanduser()
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            patterns = ["*.safetensors", "*.safetensors.index.json"]
            directory = Path(snapshot_download(model, allow_patterns=patterns))
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {key: directory / name for key, name in weight_map.items()}
        elif (directory / "model.safetensors").is_file():
            with safe_open(directory / "model.safetensors", framework="pt") as f:
                files = dict.fromkeys(f.keys(), directory / "model.safetensors")
        else:
            raise FileNotFoundError(
                f"Base model {model!r} has no safetensors weights (model.safetensors or its index), which "
                "the layer-by-layer comparison reads. Re-save the base with `save_pretrained` (safetensors "
                "is its default)."
            )
        self.model = model
        self.files = files
        self._safe_open = safe_open
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.files:
            raise ValueError(
                f"Base model {self.model!r} has no weight {key!r}. Is it the model the unlearned one started "
                "from, with the same architecture? Pass that model with `base` (`--base`)."
            )
        path = self.files[key]
        if path not in self._handles:
            self._handles[path] = self._safe_open(path, framework="pt")
        return self._handles[path].get_tensor(key)


def _gguf_weights(base: str) -> dict[str, torch.Tensor]:
    """A ``.gguf`` base's weights, dequantized: a GGUF file has no per-tensor reads in transformers' names."""
    return {key: value.detach() for key, value in load_causal_lm(base).state_dict().items()}


@torch.no_grad()
def _full_statistics(
    model: nn.Module, base: str, schemes: list[Scheme], progress: bool
) -> dict[str, dict[str, SurvivalStats]]:
    base_weights = _gguf_weights(base) if is_gguf(base) else _SafetensorsWeights(base)
    layers: dict[str, dict[str, SurvivalStats]] = {scheme.name: {} for scheme in schemes}
    deployed = deployed_layers(model)
    for layer in tqdm(deployed, desc="Survival statistics", unit="layer", disable=not progress):
        w0, w1 = base_weights[f"{layer.name}.weight"], layer.linear.weight
        if w0.shape != w1.shape:
            raise ValueError(
                f"Layer {layer.name!r} has shape {tuple(w1.shape)} but the base's has {tuple(w0.shape)}; "
                "`base` must be the model the unlearned one started from."
            )
        # W0 is the base's weight, read from disk one layer at a time.
        layer.source, layer.snapshot = "snapshot", w0
        _collect(layers, layer.name, _layer_stats(layer, schemes))
        layer.snapshot = None
    return layers


# ---------------------------------------------------------------------- loading and saving
def _load_tokenizer(source: Path, base: str, trust_remote_code: bool) -> Any:
    # UnlearningModule saves the tokenizer next to the adapter; an adapter saved without one uses the base's.
    has_own = (source / "tokenizer_config.json").is_file()
    path = str(source) if has_own else base
    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def _save_quantized(
    merged_dir: Path, quantize: str, dtype: torch.dtype, tokenizer: Any, trust_remote_code: bool
) -> Path:
    from transformers import AutoModelForCausalLM

    target = merged_dir / quantize
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            merged_dir,
            quantization_config=bitsandbytes_config(quantize, dtype),
            dtype=dtype,
            device_map={"": device},
            trust_remote_code=trust_remote_code,
        )
        model.save_pretrained(target)
    except (ImportError, NotImplementedError, RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"bitsandbytes could not quantize and save the model as {quantize} on {device} ({err}). "
            "Serialising bitsandbytes weights may need a CUDA device. The merged model in "
            f"{str(merged_dir)!r} is complete: quantize it at load time with "
            "`from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`, or rerun the export with "
            "`--quantize` on a CUDA machine."
        ) from err
    tokenizer.save_pretrained(target)
    return target


def export(
    adapter_or_model: str,
    output_dir: str,
    base: str | None = None,
    quantize: Quantize = "none",
    schemes: Sequence[str | Deployment] = DEFAULT_SCHEMES,
    dtype: Dtype = "auto",
    worst: int = 5,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
    gguf: str | None = None,
) -> ExportReport:
    """Merge an adapter into its base (or take a full model), save it for deployment, report what 4-bit keeps.

    Writes into ``output_dir``: the merged model (``save_pretrained``, safetensors) and tokenizer, and
    ``survival.json`` / ``survival.md`` with the survival statistics of every updated linear layer under
    each scheme (``W0`` = base, ``ΔW`` = merged − base), pooled and for the ``worst`` layers. With
    ``quantize``, also a bitsandbytes-quantized copy in ``output_dir/<quantize>`` (with the tokenizer), as
    ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` stores it.

    Args:
        adapter_or_model: A LoRA adapter directory (``adapter_config.json``, as ``UnlearningModule`` or
            peft's ``save_pretrained`` writes it) or a full model directory; ``world:...`` paths resolve to
            the toy world.
        output_dir: Directory for the merged model and the reports.
        base: The base model (path, hub id or ``world:target``). For an adapter it overrides
            ``base_model_name_or_path`` of ``adapter_config.json``; for a full model it is required. Its
            weights are ``W0``; for a full model they are read from its safetensors files.
        quantize: Also save a bitsandbytes copy: ``nf4``/``fp4`` (``load_in_4bit``, block 64) or ``int8``
            (LLM.int8, ``load_in_8bit``); ``full`` (or its alias ``none``) saves only the merged model. Its
            scheme is added to ``schemes`` so the report covers the deployed format.
        schemes: Schemes of :data:`lit_unlearn.quantization.SCHEMES` to report, each at its default block
            size or with its own (``"int4:64"``), or :class:`~lit_unlearn.deployment.Deployment` s.
        dtype: Dtype to load and save the model in; ``auto`` keeps the base's stored dtype.
        worst: How many of the worst layers the report lists per scheme.
        overwrite: Write into a non-empty ``output_dir``.
        trust_remote_code: Passed to ``from_pretrained``; off unless you trust the model's code.
        progress: Show tqdm progress bars.
        gguf: Also write ``output_dir/model.<format>.gguf`` for llama.cpp: one of
            :data:`GGUF_EXPORT_FORMATS` (``q4_1``, ``q4_k_m``, ``f16``, ...; ``base`` = the format of the
            ``.gguf`` the base was loaded from). Its scheme is added to ``schemes``. Llama models only.

    Returns:
        The :class:`ExportReport` that ``survival.json`` holds.

    Raises:
        FileNotFoundError: if the adapter/model or a local base directory does not exist.
        FileExistsError: if ``output_dir`` is not empty and ``overwrite`` is off.
        ValueError: for an unknown ``quantize``, ``dtype``, ``gguf`` or scheme, ``gguf="base"`` for a base that
            was no ``.gguf`` file, a full model without ``base``, or a base whose weights do not match. All
            argument checks run before any model is loaded.
        RuntimeError: if bitsandbytes cannot serialise the quantized copy on this machine; the merged
            model is complete by then.

    Example::

        from lit_unlearn.export import export

        report = export("logs/adapter", "merged", quantize="nf4")
        print(report.total("nf4").cosine)
    """
    quantize = _check_quantize(quantize)
    _check_choice("dtype", dtype, DTYPE_CHOICES)
    if worst < 1:
        raise ValueError(f"`worst` must be a positive number of layers, got {worst}.")
    source, kind, base_path = _resolve_inputs(adapter_or_model, base)
    four_bit = read_four_bit_base(source) if kind == "lora" else None
    if four_bit is not None:
        if quantize not in ("none", four_bit.quant_type):
            raise ValueError(
                f"{str(source)!r} was trained over a {four_bit.quant_type} base (QLoRA), so its deployment is the "
                f"merge re-quantized to {four_bit.quant_type}, which the export writes into "
                f"`<output_dir>/{four_bit.quant_type}`. `quantize`={quantize!r} would quantize the merged model "
                f"a second way; drop it (or pass {four_bit.quant_type!r}), and quantize the exported full-precision "
                "model at load time if you want another format."
            )
        quantize = four_bit.quant_type
    gguf_base = _recorded_gguf_base(source, base_path)
    gguf_format = _check_gguf(gguf, gguf_base)
    schemes = _check_schemes(schemes, quantize)
    schemes += [s for s in _gguf_schemes(gguf_format) if s.name not in {t.name for t in schemes}]
    out = _prepare_output(output_dir, source, overwrite)

    load_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    requantized = None
    if four_bit is not None:
        model, layers, requantized = _load_qlora(
            source, base_path, load_dtype, schemes, trust_remote_code, progress, four_bit
        )
    else:
        load = _load_lora if kind == "lora" else _load_full
        model, layers = load(source, base_path, load_dtype, schemes, trust_remote_code, progress)
    tokenizer = _load_tokenizer(source, base_path, trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    misdecoded = _avx512_misdecoded(model, quantize)
    gguf_file, gguf_types = None, {}
    if gguf_format is not None:
        gguf_file = out / f"model.{gguf_format}.gguf"
        gguf_types = write_gguf(model, tokenizer, gguf_file, gguf_format, base=gguf_base_of(model) or gguf_base)
    del model  # the quantized copy is loaded from disk; two models never share memory

    report = ExportReport(
        source=str(adapter_or_model), base=str(base or base_path), kind=kind, output_dir=str(out),
        quantized_dir=None, quantize="none", layers=layers, worst=worst,
        base_quantization=None if four_bit is None else four_bit.quant_type,
        gguf_file=None if gguf_file is None else str(gguf_file), gguf_format=gguf_format,
        gguf_tensor_types=gguf_types,
    )
    # Written before quantizing, so a failed bitsandbytes save still leaves a complete, documented export.
    report.write(out)
    if requantized is not None:
        target = out / quantize
        requantized.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del requantized
        report.quantized_dir, report.quantize = str(target), quantize
        report.write(out)
    elif quantize != "none":
        report.quantized_dir = str(_save_quantized(out, quantize, model_dtype, tokenizer, trust_remote_code))
        report.quantize = quantize
        report.avx512_misdecoded = misdecoded
        report.write(out)
        if misdecoded and cpu_has_avx512():
            warnings.warn(_avx512_note(quantize, misdecoded), stacklevel=2)
    return report


def _recorded_gguf_base(source: Path, base: str) -> GGUFBase | None:
    """The GGUF file the exported model started from: the ``.gguf`` base, else the one recorded beside it."""
    if is_gguf(base):
        return GGUFBase.from_file(Path(base).expanduser())
    # Beside an adapter or model whose base was a .gguf: its format and types (the file may be elsewhere now).
    return read_gguf_base(source)


def _check_gguf(gguf: str | None, base: GGUFBase | None) -> str | None:
    """``gguf`` checked, with ``base`` resolved to the base's recorded format; ``None`` when not asked for."""
    if gguf is None:
        return None
    _check_choice("gguf", gguf, GGUF_EXPORT_FORMATS)
    if gguf == "base":
        if base is None:
            raise ValueError(
                "`gguf`='base' writes the format the base was stored in, but the base was not loaded from a .gguf "
                "file (no .gguf `base` and no base_gguf.json beside the adapter or model). Name a format instead, "
                f"one of {', '.join(map(repr, GGUF_EXPORT_FORMATS[:-1]))}."
            )
        if base.format not in GGUF_EXPORT_FORMATS:
            raise ValueError(
                f"The base {base.path!r} is stored as {base.format!r}, which GGUF export does not write; choose "
                f"one of {', '.join(map(repr, GGUF_EXPORT_FORMATS[:-1]))}."
            )
        return base.format
    if gguf not in ("f32", "f16"):
        try:
            from lit_unlearn.quantization import gguf_bytes  # noqa: F401
        except ImportError as error:
            raise ValueError(
                f"`gguf`={gguf!r} needs lit_unlearn.quantization.gguf_bytes (ggml's block encoder), which this "
                "installation lacks; export 'f16' or 'f32' and quantize with llama.cpp's llama-quantize."
            ) from error
    return gguf


def _gguf_schemes(fmt: str | None) -> list[Scheme]:
    """The survival-report scheme of a GGUF format: its own when the registry has it (``f16`` is ``fp16``)."""
    if fmt is None or fmt == "f32":
        return []
    name = {"f16": "fp16"}.get(fmt, fmt)
    return [get_scheme(name)] if name in SCHEMES else []


def _load_lora(
    source: Path, base: str, dtype: Any, schemes: list[Scheme], trust_remote_code: bool, progress: bool
) -> tuple[nn.Module, dict[str, dict[str, SurvivalStats]]]:
    """The base with the adapter merged, and the statistics of each adapted layer taken before the merge."""
    model = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    peft_model = load_adapter(model, source).eval()
    layers = _lora_statistics(peft_model, schemes, progress)
    return merge_adapter(peft_model, progress), layers


def _load_qlora(
    source: Path,
    base: str,
    dtype: Any,
    schemes: list[Scheme],
    trust_remote_code: bool,
    progress: bool,
    four_bit: FourBitBase,
) -> tuple[nn.Module, dict[str, dict[str, SurvivalStats]], nn.Module]:
    """A QLoRA adapter's two deployments and its statistics: the full-precision merge (the decoded base plus
    ``ΔW``, in ``dtype``; ``auto`` is the base's compute dtype), and the merge re-quantized to the base's
    format. The base is loaded as the fit loaded it."""
    from transformers import AutoModelForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=four_bit.bitsandbytes_config(), dtype=getattr(torch, four_bit.compute_dtype),
        trust_remote_code=trust_remote_code,
    )
    keep_4bit_layout(quantized)
    peft_model = load_adapter(quantized, source).eval()
    layers = _lora_statistics(peft_model, schemes, progress)
    merged_dtype = getattr(torch, four_bit.compute_dtype) if dtype == "auto" else dtype
    merged_state = dequantized_merged_state(peft_model, merged_dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=merged_dtype, trust_remote_code=trust_remote_code)
    params = dict(model.named_parameters())
    for name, value in merged_state.items():
        params[name].data = value
    return model, layers, requantize_merged_(peft_model)


def _load_full(
    source: Path, base: str, dtype: Any, schemes: list[Scheme], trust_remote_code: bool, progress: bool
) -> tuple[nn.Module, dict[str, dict[str, SurvivalStats]]]:
    """The full-parameter model, and the statistics of each of its linear layers against ``base``."""
    model = load_causal_lm(source, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, _full_statistics(model, base, schemes, progress)


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn export",
        description=(
            "Merge a LoRA adapter into its base (or take a full-parameter model), save it as safetensors for "
            "deployment, and report per quantization scheme how much of the unlearning update survives."
        ),
    )
    parser.add_argument(
        "adapter_or_model", help="adapter directory (adapter_config.json), or a model directory with --base"
    )
    parser.add_argument("output_dir", help="directory for the merged model, tokenizer and survival reports")
    parser.add_argument("--base", default=None, help="base model (default: the adapter's)")
    parser.add_argument(
        "--quantize", default="none", choices=QUANTIZE_CHOICES,
        help="also save a bitsandbytes copy in OUTPUT_DIR/<format> (default: none)",
    )
    parser.add_argument(
        "--schemes", nargs="+", default=list(DEFAULT_SCHEMES), metavar="SCHEME",
        help=f"schemes to report (default: {' '.join(DEFAULT_SCHEMES)}); any of {', '.join(SCHEMES)}",
    )
    parser.add_argument(
        "--gguf", default=None, choices=GGUF_EXPORT_FORMATS, metavar="FORMAT",
        help="also write OUTPUT_DIR/model.FORMAT.gguf for llama.cpp: " + ", ".join(GGUF_EXPORT_FORMATS)
        + " (base = the format of the .gguf the base was loaded from)",
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="saved dtype (default: auto)")
    parser.add_argument("--worst", type=int, default=5, help="worst layers listed per scheme (default: 5)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUTPUT_DIR")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> ExportReport:
    """``lit-unlearn export``: parse ``argv``, export, print the survival report (Markdown)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        report = export(
            args.adapter_or_model, args.output_dir, base=args.base, quantize=args.quantize,
            schemes=args.schemes, dtype=args.dtype, worst=args.worst, overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code, progress=not args.no_progress, gguf=args.gguf,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(report.to_markdown())
    copy = f"; {report.quantize} copy: {report.quantized_dir}" if report.quantized_dir else ""
    print(f"Merged model: {report.output_dir}{copy}")
    if report.gguf_file is not None:
        print(f"llama.cpp file: {report.gguf_file}")
    return report
