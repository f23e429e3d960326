"""The export's inputs, checked before any model loads: the adapter or model directory and its base (an adapter's
``adapter_config.json``, a ``.gguf`` base and the GGUF format it was stored in), the output directory, and
the ``quantize``, ``dtype``, ``schemes`` and ``gguf`` arguments."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lit_unlearn.data.sources import resolve_path
from lit_unlearn.deployment import FULL, Deployment
from lit_unlearn.deployment.bitsandbytes import BITSANDBYTES_FORMATS, FOUR_BIT_FORMATS
from lit_unlearn.deployment.config import unsupported
from lit_unlearn.gguf_io import GGUF_EXPORT_FORMATS, GGUFBase, is_gguf, read_gguf_base
from lit_unlearn.quantization import SCHEMES, Scheme, get_scheme

__all__ = ["DEFAULT_SCHEMES", "DTYPE_CHOICES", "QUANTIZE_CHOICES", "Dtype", "Quantize"]

Quantize = Literal["none", "full", "nf4", "fp4", "int8"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# The formats bitsandbytes stores a copy in (at its fixed block 64), and "full" for none. "none", the word
# this command used first, is kept as an alias of "full" (README: `--quantize none`).
QUANTIZE_CHOICES: tuple[str, ...] = ("none", FULL, *FOUR_BIT_FORMATS, *(f for f in BITSANDBYTES_FORMATS if f not in FOUR_BIT_FORMATS))
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
# The two 4-bit formats of P1's deployments (fp4 in its first runs, nf4 later).
DEFAULT_SCHEMES: tuple[str, ...] = ("nf4", "fp4")


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
