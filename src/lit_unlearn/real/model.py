"""Load SmolLM2-135M-Instruct from its GGUF file into transformers (float32, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_unlearn.real.paths import smollm2_path

__all__ = ["load_smollm2"]


def load_smollm2(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of SmolLM2 from ``path`` (default: ``real:smollm2``), in eval mode.

    Loaded through :func:`lit_unlearn.gguf_io.load_causal_lm`, the package's one GGUF loader: transformers
    dequantizes the Q4_1 tensors to ``dtype`` (about 3 s) and converts the GGUF vocabulary to a fast
    tokenizer (about 25 s on one CPU thread); nothing is downloaded. The model records its base format
    (``model.gguf_base``: Q4_1) and saves as safetensors.
    """
    from lit_unlearn.gguf_io import load_causal_lm, load_tokenizer

    path = Path(path) if path is not None else smollm2_path()
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype=dtype)
    return model.eval(), tokenizer
