"""The export's extra copies of the merged model: bitsandbytes' quantized copy (``--quantize``) and the
llama.cpp file (``--gguf``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_unlearn.deployment.bitsandbytes import bitsandbytes_config
from lit_unlearn.gguf_io import GGUFBase, gguf_base_of, write_gguf


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


def _save_gguf(
    model: nn.Module, tokenizer: Any, out: Path, gguf_format: str, gguf_base: GGUFBase | None
) -> tuple[Path, dict[str, str]]:
    """Write ``out/model.<format>.gguf`` for llama.cpp; return its path and each tensor's GGUF type."""
    gguf_file = out / f"model.{gguf_format}.gguf"
    return gguf_file, write_gguf(model, tokenizer, gguf_file, gguf_format, base=gguf_base_of(model) or gguf_base)
