"""A 4-bit base for LoRA unlearning (QLoRA): how it is loaded, checked and recorded next to the adapter.

:class:`FourBitBase` is the base's format — bitsandbytes' ``nf4`` or ``fp4`` with transformers' block of
64, an optional double quantization of the block scales, and the dtype the layers compute in — and the
module's ``four_bit`` argument. :func:`four_bit_base` is the one place the module's arguments become one
(or ``None``), its compute dtype resolved and checked before any weights are read. An adapter trained over
such a base records it in :data:`BASE_QUANTIZATION_FILE`, so ``lit-unlearn export`` and ``evaluate``
rebuild the same base the adapter was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch

__all__ = ["BASE_QUANTIZATION_FILE", "FourBitBase", "four_bit_base", "read_four_bit_base"]

#: Written next to an adapter trained over a 4-bit base: the base's :class:`FourBitBase`, as JSON.
BASE_QUANTIZATION_FILE = "base_quantization.json"

QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
_QUANT_TYPES: tuple[str, ...] = get_args(QuantType)
_DTYPES: tuple[str, ...] = get_args(ComputeDtype)


@dataclass(frozen=True)
class FourBitBase:
    """The format of a bitsandbytes 4-bit base (``BitsAndBytesConfig(load_in_4bit=True, ...)``).

    As the module's ``four_bit`` in YAML: ``four_bit: {quant_type: nf4, compute_dtype: bfloat16}``, or
    ``four_bit: {}`` for QLoRA's nf4 computing in the module's ``dtype``.

    Attributes:
        quant_type: ``"nf4"`` (QLoRA's) or ``"fp4"``.
        compute_dtype: Dtype the 4-bit layers compute in (``bnb_4bit_compute_dtype``), a torch dtype name
            (a ``torch.dtype`` is taken by its name). ``None`` computes in the dtype the model is loaded in:
            the module fills it in, so a base it loads or records always names one.
        double_quant: Whether the block scales are themselves quantized (``bnb_4bit_use_double_quant``).
    """

    quant_type: QuantType = "nf4"
    compute_dtype: ComputeDtype | None = None
    double_quant: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.compute_dtype, (torch.dtype, str)):
            object.__setattr__(self, "compute_dtype", _dtype_name(self.compute_dtype, "compute_dtype"))
        if self.quant_type not in _QUANT_TYPES:
            raise ValueError(
                f"4-bit base quant type {self.quant_type!r} is not one of bitsandbytes' 4-bit formats; choose "
                "'nf4' (QLoRA's) or 'fp4'."
            )
        if self.compute_dtype is not None and self.compute_dtype not in _DTYPES:
            raise ValueError(
                f"4-bit base compute dtype {self.compute_dtype!r} must be one of {', '.join(_DTYPES)} "
                "(or unset, to compute in the model's `dtype`)."
            )
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"4-bit base `double_quant` must be True or False, got {self.double_quant!r}.")

    def bitsandbytes_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig`` that loads a base in this format."""
        from lit_unlearn.deployment.bitsandbytes import bitsandbytes_config

        dtype = getattr(torch, self._concrete_dtype("loading a base"))
        return bitsandbytes_config(self.quant_type, dtype, double_quant=self.double_quant)

    def write(self, directory: str | Path) -> None:
        """Record this format next to an adapter (``directory/base_quantization.json``)."""
        from lit_unlearn._atomic import atomic_write_text

        self._concrete_dtype("recording it")
        text = json.dumps({"load_in_4bit": True, **asdict(self)}, indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(directory) / BASE_QUANTIZATION_FILE, text)

    def _concrete_dtype(self, doing: str) -> str:
        if self.compute_dtype is None:
            raise ValueError(
                f"{self!r} leaves its compute dtype to the model's `dtype`, which {doing} needs named: "
                "resolve it first (`four_bit_base(base, dtype=...)`, or "
                "`dataclasses.replace(base, compute_dtype=...)`)."
            )
        return self.compute_dtype


def _dtype_name(value: Any, what: str) -> str:
    """``value``'s torch dtype name (``torch.bfloat16`` and ``"torch.bfloat16"`` are ``"bfloat16"``)."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, str):
        return value.removeprefix("torch.")
    raise ValueError(f"`{what}`={value!r} must be a dtype name such as 'bfloat16'.")


def _from_fields(four_bit: dict[str, Any]) -> FourBitBase:
    names = [field.name for field in fields(FourBitBase)]
    unknown = sorted(set(four_bit) - set(names))
    if unknown:
        raise ValueError(
            f"`four_bit` has no field {', '.join(map(repr, unknown))}; its fields are {', '.join(names)} "
            "(e.g. `four_bit: {quant_type: nf4, compute_dtype: bfloat16}`)."
        )
    return FourBitBase(**four_bit)


def four_bit_base(
    four_bit: FourBitBase | dict[str, Any] | None = None,
    quantization_config: Any = None,
    *,
    dtype: str = "float32",
) -> FourBitBase | None:
    """The 4-bit base the module's arguments ask for, or ``None`` for a base in ``dtype``.

    ``four_bit`` is the base as a :class:`FourBitBase` (or the dict of its fields, as YAML and a
    checkpoint's ``hparams`` give it); ``quantization_config`` says the same as a ``BitsAndBytesConfig`` or
    its dict, from Python. An unset compute dtype is ``dtype``: the base returned always names one.

    Raises:
        ValueError: for both forms at once, an 8-bit config (LoRA over an LLM.int8 base is not a
            deployment path this measures), a ``four_bit`` of another type or with unknown fields, or a
            quant type or dtype bitsandbytes has not.
    """
    if quantization_config is not None:
        if four_bit is not None:
            raise ValueError(
                "Both `four_bit` and `quantization_config` are set; give the 4-bit base one way: `four_bit` "
                "(e.g. `four_bit: {quant_type: nf4}`), or a `quantization_config`."
            )
        config = quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()
        if config.get("load_in_8bit"):
            raise ValueError(
                "`quantization_config` loads the base in 8 bits (LLM.int8). lit-unlearn trains LoRA over a "
                "4-bit base (QLoRA: `four_bit: {quant_type: nf4}`); for an 8-bit deployment train over a "
                "full-precision base and measure `int8` with the callbacks."
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
    if four_bit is None:
        return None
    if isinstance(four_bit, dict):
        four_bit = _from_fields(four_bit)
    if not isinstance(four_bit, FourBitBase):
        raise ValueError(
            f"`four_bit`={four_bit!r} is not a 4-bit base format: give a FourBitBase or its fields (YAML: "
            "`four_bit: {quant_type: nf4}`, or `four_bit: {}` for the defaults), or null for a base in "
            "`dtype`."
        )
    if four_bit.compute_dtype is None:
        four_bit = replace(four_bit, compute_dtype=dtype)
    return four_bit


def read_four_bit_base(directory: str | Path) -> FourBitBase | None:
    """The 4-bit base an adapter in ``directory`` was trained over, or ``None`` when it records none."""
    path = Path(directory) / BASE_QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["compute_dtype"] is None:
            raise ValueError("compute_dtype is null")
        return FourBitBase(record["quant_type"], record["compute_dtype"], bool(record["double_quant"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} does not describe a 4-bit base ({error}); it should hold quant_type, compute_dtype "
            "and double_quant, as a QLoRA fit writes it. Delete it to treat the base as full precision."
        ) from error
