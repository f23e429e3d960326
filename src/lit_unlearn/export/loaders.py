"""The export's three loaders, each returning the model to save and its survival statistics: an adapter merged
into its base, a QLoRA adapter's two deployments over its 4-bit base, and a full-parameter model; and the
tokenizer saved with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_unlearn.adapters import load_adapter
from lit_unlearn.deployment.four_bit import dequantized_merged_state, requantize_merged_
from lit_unlearn.deployment.model import merge_into_base
from lit_unlearn.export.statistics import _full_statistics, _lora_statistics
from lit_unlearn.four_bit_base import FourBitBase
from lit_unlearn.gguf_io import load_causal_lm, load_tokenizer
from lit_unlearn.quantization import Scheme, SurvivalStats
from lit_unlearn.quantization.bnb_decode import keep_4bit_layout


def _load_tokenizer(source: Path, base: str, trust_remote_code: bool) -> Any:
    # UnlearningModule saves the tokenizer next to the adapter; an adapter saved without one uses the base's.
    has_own = (source / "tokenizer_config.json").is_file()
    path = str(source) if has_own else base
    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def _load_lora(
    source: Path, base: str, dtype: Any, schemes: list[Scheme], trust_remote_code: bool, progress: bool
) -> tuple[nn.Module, dict[str, dict[str, SurvivalStats]]]:
    """The base with the adapter merged, and the statistics of each adapted layer taken before the merge."""
    model = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    peft_model = load_adapter(model, source).eval()
    layers = _lora_statistics(peft_model, schemes, progress)
    return merge_into_base(peft_model, progress), layers


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
