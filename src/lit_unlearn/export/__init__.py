"""``lit-unlearn export``: merge an unlearning adapter into its base for deployment, and say what 4-bit keeps.

P1's protocol merges the LoRA adapter into the base weights (``merge_and_unload``) before post-training
quantization, so a deployment serves ``Q(W0 + ΔW)``. This command writes that merged model as safetensors
and, next to it, the survival statistics of every updated layer under each scheme (``survival.json``,
``survival.md``): the share of quantization codes the update flips, the share of it below half a step,
and how much of it ``Q(W0 + ΔW) - Q(W0)`` still carries (``retained``, ``cosine``, ``rel_error``; see
:mod:`lit_unlearn.quantization.survival`). The statistics explain, they are no verdict: whether the
forgetting survives is measured functionally (``QuantizedEvaluation``).

Statistics stream one layer at a time through :class:`lit_unlearn.deployment.DeployedLayer`: for an
adapter, ``ΔW`` is read before the merge and the merged weight formed as peft forms it (the float32 update
added to the base and rounded once to its dtype), so the statistics describe exactly the weights written;
for a full-parameter model, each base weight is read on its own from the base's safetensors files. No
second copy of the model is built.

An adapter trained over a 4-bit base (QLoRA; its directory holds ``base_quantization.json``) is exported
along that deployment: the base is loaded in its 4-bit format, ``W0`` is the decoded base, and the export
writes the merged model in full precision (the decoded base plus ``ΔW``) and, in ``<output_dir>/nf4`` (the
base's format), the merge re-quantized as peft's 4-bit merge writes it
(:func:`lit_unlearn.deployment.four_bit.requantize_merged_`).

With ``gguf`` (``--gguf FORMAT``) the merged model is also written as one llama.cpp file,
``<output_dir>/model.<format>.gguf`` (:func:`lit_unlearn.gguf_io.write_gguf`), in a GGUF type (``q4_1``,
``q4_k``...), a K mixture (``q4_k_m``), ``f16``/``f32``, or ``base``: the format the base was stored in when
it was a ``.gguf`` file (SmolLM2's ``q4_1``), the deployment whose grid the base already sits on. The
survival report then covers that format. A base may itself be a ``.gguf`` file: its metadata (tokenizer,
chat template, hyper-parameters) is copied into the exported file.

Example::

    lit-unlearn export logs/adapter merged/ --quantize nf4
    lit-unlearn export logs/adapter merged/ --gguf base         # a .gguf base, re-quantized to its own format
    lit-unlearn export logs/model merged/ --base world:target   # full-parameter unlearning

The package, by job: :mod:`~lit_unlearn.export.report` (:class:`ExportReport` and its tables),
:mod:`~lit_unlearn.export.inputs` (the paths, the adapter's config, the base and the arguments, checked
before loading), :mod:`~lit_unlearn.export.statistics` (per-layer survival of an adapter or a full model),
:mod:`~lit_unlearn.export.loaders` (adapter, QLoRA adapter, full model), :mod:`~lit_unlearn.export.saving`
(the bitsandbytes copy and the GGUF file), :mod:`~lit_unlearn.export.pipeline` (:func:`export`) and
:mod:`~lit_unlearn.export.cli` (``main``).
"""

from __future__ import annotations

from lit_unlearn.export.cli import _parser, main
from lit_unlearn.export.inputs import (
    DEFAULT_SCHEMES,
    DTYPE_CHOICES,
    QUANTIZE_CHOICES,
    _check_quantize,
    _check_schemes,
    _read_adapter_config,
    _resolve_inputs,
)
from lit_unlearn.export.pipeline import export
from lit_unlearn.export.report import ExportReport
from lit_unlearn.gguf_io import GGUF_EXPORT_FORMATS

__all__ = ["GGUF_EXPORT_FORMATS", "QUANTIZE_CHOICES", "ExportReport", "export", "main"]
