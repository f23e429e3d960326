"""The export's survival statistics, one layer at a time: an adapter's layers from ``ΔW`` before the merge, a
full-parameter model's against its base's weights read from disk (safetensors, or a ``.gguf`` base
dequantized), and the layers bitsandbytes' AVX-512 CPU kernel decodes wrongly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_unlearn.adapters import lora_delta
from lit_unlearn.deployment import DeployedLayer, deployed_layers
from lit_unlearn.deployment.bitsandbytes import FOUR_BIT_FORMATS
from lit_unlearn.gguf_io import is_gguf, load_causal_lm
from lit_unlearn.quantization import Scheme, SurvivalStats, get_scheme
from lit_unlearn.quantization.bnb_decode import cpu_deviation


def _avx512_misdecoded(model: nn.Module, quantize: str) -> list[str]:
    """The deployed layers an AVX-512 CPU running bitsandbytes 0.50 decodes with wrong block scales."""
    if quantize not in FOUR_BIT_FORMATS:
        return []
    block = get_scheme(quantize).block_size
    return [
        layer.name for layer in deployed_layers(model)
        if cpu_deviation(layer.linear.weight.shape, block, quantize, avx512=True) == "scales"
    ]


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
        with layer.measured_against(w0):
            _collect(layers, layer.name, _layer_stats(layer, schemes))
    return layers
