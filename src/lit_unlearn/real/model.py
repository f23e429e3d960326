"""Load SmolLM2-135M-Instruct from its GGUF file into transformers (float32, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_unlearn.real.paths import smollm2_path

__all__ = ["load_smollm2"]


def load_smollm2(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of SmolLM2 from ``path`` (default: ``real:smollm2``), in eval mode.

    transformers dequantizes the Q4_1 tensors to ``dtype`` (about 3 s) and converts the GGUF vocabulary
    to a fast tokenizer (about 25 s on one CPU thread); nothing is downloaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model.eval(), tokenizer
