"""A 4-bit base for LoRA unlearning (QLoRA): how it is loaded, checked and recorded next to the adapter.

:class:`FourBitBase` is the base's format — bitsandbytes' ``nf4`` or ``fp4`` with transformers' block of
64, an optional double quantization of the block scales, and the dtype the layers compute in — and
:func:`four_bit_base` the one place the module's arguments become one (or ``None``), checked before any
weights are read. An adapter trained over such a base records it in :data:`BASE_QUANTIZATION_FILE`, so
``lit-unlearn export`` and ``evaluate`` rebuild the same base the adapter was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["BASE_QUANTIZATION_FILE", "FourBitBase", "four_bit_base", "read_four_bit_base"]

#: Written next to an adapter trained over a 4-bit base: the base's :class:`FourBitBase`, as JSON.
BASE_QUANTIZATION_FILE = "base_quantization.json"
_QUANT_TYPES = ("nf4", "fp4")
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class FourBitBase:
    """The format of a bitsandbytes 4-bit base (``BitsAndBytesConfig(load_in_4bit=True, ...)``).

    Attributes:
        quant_type: ``"nf4"`` (QLoRA's) or ``"fp4"``.
        compute_dtype: Dtype the 4-bit layers compute in (``bnb_4bit_compute_dtype``), a torch dtype name.
        double_quant: Whether the block scales are themselves quantized (``bnb_4bit_use_double_quant``).
    """

    quant_type: str = "nf4"
    compute_dtype: str = "float32"
    double_quant: bool = False

    def __post_init__(self) -> None:
        if self.quant_type not in _QUANT_TYPES:
            raise ValueError(
                f"4-bit base quant type {self.quant_type!r} is not one of bitsandbytes' 4-bit formats; choose "
                "'nf4' (QLoRA's) or 'fp4'."
            )
        if self.compute_dtype not in _DTYPES:
            raise ValueError(f"4-bit base compute dtype {self.compute_dtype!r} must be one of {', '.join(_DTYPES)}.")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"`bnb_4bit_use_double_quant` must be True or False, got {self.double_quant!r}.")

    def bitsandbytes_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig`` that loads a base in this format."""
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_use_double_quant=self.double_quant,
        )

    def write(self, directory: str | Path) -> None:
        """Record this format next to an adapter (``directory/base_quantization.json``)."""
        from lit_unlearn._atomic import atomic_write_text

        text = json.dumps({"load_in_4bit": True, **asdict(self)}, indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(directory) / BASE_QUANTIZATION_FILE, text)


def _dtype_name(value: Any, what: str) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, str):
        return value.removeprefix("torch.")
    raise ValueError(f"`{what}`={value!r} must be a dtype name such as 'bfloat16'.")


def four_bit_base(
    load_in_4bit: bool = False,
    quant_type: str = "nf4",
    compute_dtype: str | torch.dtype | None = None,
    double_quant: bool = False,
    quantization_config: Any = None,
    *,
    dtype: str = "float32",
) -> FourBitBase | None:
    """The 4-bit base the module's arguments ask for, or ``None`` for a base in ``dtype``.

    ``quantization_config`` is a ``BitsAndBytesConfig`` or its dict; the ``load_in_4bit`` switch and its
    ``bnb_4bit_*`` arguments say the same in YAML-friendly form. ``compute_dtype=None`` computes in ``dtype``.

    Raises:
        ValueError: for both forms at once, an 8-bit config (LoRA over an LLM.int8 base is not a
            deployment path this measures), or a quant type or dtype bitsandbytes has not.
    """
    if quantization_config is not None:
        if load_in_4bit:
            raise ValueError(
                "Both `load_in_4bit` and `quantization_config` are set; give the 4-bit base one way: the "
                "switch with its `bnb_4bit_*` arguments, or a `quantization_config`."
            )
        config = quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()
        if config.get("load_in_8bit"):
            raise ValueError(
                "`quantization_config` loads the base in 8 bits (LLM.int8). lit-unlearn trains LoRA over a 4-bit "
                "base (QLoRA: `load_in_4bit: true`); for an 8-bit deployment train over a full-precision base "
                "and measure `int8` with the callbacks."
            )
        if not config.get("load_in_4bit"):
            raise ValueError(
                f"`quantization_config`={quantization_config!r} does not set `load_in_4bit: true`; it is the "
                "4-bit base of a QLoRA run, so say the format (e.g. `bnb_4bit_quant_type: nf4`)."
            )
        return FourBitBase(
            quant_type=config.get("bnb_4bit_quant_type", "nf4"),
            compute_dtype=_dtype_name(config.get("bnb_4bit_compute_dtype") or dtype, "bnb_4bit_compute_dtype"),
            double_quant=bool(config.get("bnb_4bit_use_double_quant", False)),
        )
    if not isinstance(load_in_4bit, bool):
        raise ValueError(f"`load_in_4bit` must be True or False, got {load_in_4bit!r}.")
    if not load_in_4bit:
        return None
    return FourBitBase(
        quant_type=quant_type,
        compute_dtype=_dtype_name(compute_dtype or dtype, "bnb_4bit_compute_dtype"),
        double_quant=double_quant,
    )


def read_four_bit_base(directory: str | Path) -> FourBitBase | None:
    """The 4-bit base an adapter in ``directory`` was trained over, or ``None`` when it records none."""
    path = Path(directory) / BASE_QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return FourBitBase(record["quant_type"], record["compute_dtype"], bool(record["double_quant"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} does not describe a 4-bit base ({error}); it should hold quant_type, compute_dtype "
            "and double_quant, as a QLoRA fit writes it. Delete it to treat the base as full precision."
        ) from error
