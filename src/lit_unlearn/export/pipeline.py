"""The export itself, :func:`export`: the inputs checked, the model loaded with its statistics, then saved with
its report and, when asked, a quantized copy and a llama.cpp file (:mod:`lit_unlearn.export` says what each
is)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from lit_unlearn.deployment import Deployment
from lit_unlearn.export.inputs import (
    DEFAULT_SCHEMES,
    DTYPE_CHOICES,
    Dtype,
    Quantize,
    _check_choice,
    _check_gguf,
    _check_quantize,
    _check_schemes,
    _gguf_schemes,
    _prepare_output,
    _recorded_gguf_base,
    _resolve_inputs,
)
from lit_unlearn.export.loaders import _load_full, _load_lora, _load_qlora, _load_tokenizer
from lit_unlearn.export.report import ExportReport, _avx512_note
from lit_unlearn.export.saving import _save_gguf, _save_quantized
from lit_unlearn.export.statistics import _avx512_misdecoded
from lit_unlearn.four_bit_base import read_four_bit_base
from lit_unlearn.quantization.bnb_decode import cpu_has_avx512

__all__ = ["export"]


def export(
    adapter_or_model: str,
    output_dir: str,
    base: str | None = None,
    quantize: Quantize = "none",
    schemes: Sequence[str | Deployment] = DEFAULT_SCHEMES,
    dtype: Dtype = "auto",
    worst: int = 5,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
    gguf: str | None = None,
) -> ExportReport:
    """Merge an adapter into its base (or take a full model), save it for deployment, report what 4-bit keeps.

    Writes into ``output_dir``: the merged model (``save_pretrained``, safetensors) and tokenizer, and
    ``survival.json`` / ``survival.md`` with the survival statistics of every updated linear layer under
    each scheme (``W0`` = base, ``ΔW`` = merged − base), pooled and for the ``worst`` layers. With
    ``quantize``, also a bitsandbytes-quantized copy in ``output_dir/<quantize>`` (with the tokenizer), as
    ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` stores it.

    Args:
        adapter_or_model: A LoRA adapter directory (``adapter_config.json``, as ``UnlearningModule`` or
            peft's ``save_pretrained`` writes it) or a full model directory; ``world:...`` paths resolve to
            the toy world.
        output_dir: Directory for the merged model and the reports.
        base: The base model (path, hub id or ``world:target``). For an adapter it overrides
            ``base_model_name_or_path`` of ``adapter_config.json``; for a full model it is required. Its
            weights are ``W0``; for a full model they are read from its safetensors files.
        quantize: Also save a bitsandbytes copy: ``nf4``/``fp4`` (``load_in_4bit``, block 64) or ``int8``
            (LLM.int8, ``load_in_8bit``); ``full`` (or its alias ``none``) saves only the merged model. Its
            scheme is added to ``schemes`` so the report covers the deployed format.
        schemes: Schemes of :data:`lit_unlearn.quantization.SCHEMES` to report, each at its default block
            size or with its own (``"int4:64"``), or :class:`~lit_unlearn.deployment.Deployment` s.
        dtype: Dtype to load and save the model in; ``auto`` keeps the base's stored dtype.
        worst: How many of the worst layers the report lists per scheme.
        overwrite: Write into a non-empty ``output_dir``.
        trust_remote_code: Passed to ``from_pretrained``; off unless you trust the model's code.
        progress: Show tqdm progress bars.
        gguf: Also write ``output_dir/model.<format>.gguf`` for llama.cpp: one of
            :data:`GGUF_EXPORT_FORMATS` (``q4_1``, ``q4_k_m``, ``f16``, ...; ``base`` = the format of the
            ``.gguf`` the base was loaded from). Its scheme is added to ``schemes``. Llama models only.

    Returns:
        The :class:`ExportReport` that ``survival.json`` holds.

    Raises:
        FileNotFoundError: if the adapter/model or a local base directory does not exist.
        FileExistsError: if ``output_dir`` is not empty and ``overwrite`` is off.
        ValueError: for an unknown ``quantize``, ``dtype``, ``gguf`` or scheme, ``gguf="base"`` for a base that
            was no ``.gguf`` file, a full model without ``base``, or a base whose weights do not match. All
            argument checks run before any model is loaded.
        RuntimeError: if bitsandbytes cannot serialise the quantized copy on this machine; the merged
            model is complete by then.

    Example::

        from lit_unlearn.export import export

        report = export("logs/adapter", "merged", quantize="nf4")
        print(report.total("nf4").cosine)
    """
    quantize = _check_quantize(quantize)
    _check_choice("dtype", dtype, DTYPE_CHOICES)
    if worst < 1:
        raise ValueError(f"`worst` must be a positive number of layers, got {worst}.")
    source, kind, base_path = _resolve_inputs(adapter_or_model, base)
    four_bit = read_four_bit_base(source) if kind == "lora" else None
    if four_bit is not None:
        if quantize not in ("none", four_bit.quant_type):
            raise ValueError(
                f"{str(source)!r} was trained over a {four_bit.quant_type} base (QLoRA), so its deployment is the "
                f"merge re-quantized to {four_bit.quant_type}, which the export writes into "
                f"`<output_dir>/{four_bit.quant_type}`. `quantize`={quantize!r} would quantize the merged model "
                f"a second way; drop it (or pass {four_bit.quant_type!r}), and quantize the exported full-precision "
                "model at load time if you want another format."
            )
        quantize = four_bit.quant_type
    gguf_base = _recorded_gguf_base(source, base_path)
    gguf_format = _check_gguf(gguf, gguf_base)
    schemes = _check_schemes(schemes, quantize)
    schemes += [s for s in _gguf_schemes(gguf_format) if s.name not in {t.name for t in schemes}]
    out = _prepare_output(output_dir, source, overwrite)

    load_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    requantized = None
    if four_bit is not None:
        model, layers, requantized = _load_qlora(
            source, base_path, load_dtype, schemes, trust_remote_code, progress, four_bit
        )
    else:
        load = _load_lora if kind == "lora" else _load_full
        model, layers = load(source, base_path, load_dtype, schemes, trust_remote_code, progress)
    tokenizer = _load_tokenizer(source, base_path, trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    misdecoded = _avx512_misdecoded(model, quantize)
    gguf_file, gguf_types = None, {}
    if gguf_format is not None:
        gguf_file, gguf_types = _save_gguf(model, tokenizer, out, gguf_format, gguf_base)
    del model  # the quantized copy is loaded from disk; two models never share memory

    report = ExportReport(
        source=str(adapter_or_model), base=str(base or base_path), kind=kind, output_dir=str(out),
        quantized_dir=None, quantize="none", layers=layers, worst=worst,
        base_quantization=None if four_bit is None else four_bit.quant_type,
        gguf_file=None if gguf_file is None else str(gguf_file), gguf_format=gguf_format,
        gguf_tensor_types=gguf_types,
    )
    # Written before quantizing, so a failed bitsandbytes save still leaves a complete, documented export.
    report.write(out)
    if requantized is not None:
        target = out / quantize
        requantized.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del requantized
        report.quantized_dir, report.quantize = str(target), quantize
        report.write(out)
    elif quantize != "none":
        report.quantized_dir = str(_save_quantized(out, quantize, model_dtype, tokenizer, trust_remote_code))
        report.quantize = quantize
        report.avx512_misdecoded = misdecoded
        report.write(out)
        if misdecoded and cpu_has_avx512():
            warnings.warn(_avx512_note(quantize, misdecoded), stacklevel=2)
    return report
