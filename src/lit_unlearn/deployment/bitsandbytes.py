"""The one ``transformers.BitsAndBytesConfig`` lit-unlearn builds: a model loaded as a bitsandbytes deployment.

Evaluation with the real kernels, export's quantized copy and a QLoRA run's 4-bit base all load through it,
so the three cannot drift apart in block size, quant type or compute dtype.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BITSANDBYTES_FORMATS", "FOUR_BIT_FORMATS", "bitsandbytes_config"]

#: The formats a bitsandbytes deployment stores: LLM.int8 and the two 4-bit types (block 64).
BITSANDBYTES_FORMATS: tuple[str, ...] = ("int8", "nf4", "fp4")
#: Its 4-bit types (``load_in_4bit``'s ``bnb_4bit_quant_type``).
FOUR_BIT_FORMATS: tuple[str, ...] = ("nf4", "fp4")


def bitsandbytes_config(precision: str, compute_dtype: torch.dtype, double_quant: bool = False) -> Any:
    """The ``BitsAndBytesConfig`` that loads a model as ``precision`` deploys it.

    Args:
        precision: ``"int8"`` (LLM.int8, ``load_in_8bit``) or ``"nf4"``/``"fp4"`` (``load_in_4bit`` with
            transformers' fixed block of 64, the block of lit-unlearn's nf4/fp4 statistics).
        compute_dtype: The dtype 4-bit layers compute in (``bnb_4bit_compute_dtype``).
        double_quant: Quantize the 4-bit block scales too (``bnb_4bit_use_double_quant``).

    Raises:
        ValueError: for any other precision.
    """
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision not in FOUR_BIT_FORMATS:
        raise ValueError(f"bitsandbytes deploys {', '.join(map(repr, BITSANDBYTES_FORMATS))}, not {precision!r}.")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=precision, bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
    )
