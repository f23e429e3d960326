"""Which concrete format a layer gets when a scheme's block does not tile its rows.

Two rules, one function (:func:`fit_scheme`), applied wherever a weight is quantized (``quantize``,
``fake_quantize``, ``survival_stats``, ``quantize_model_``, the survival check, evaluation, export), and a
per-model listing the callbacks log (:func:`lit_unlearn.deployment.layer_schemes`, :func:`describe`):

* **GGUF**: what llama.cpp's quantize tool does. A K-quant on rows that are not whole 256-weight
  super-blocks is stored as Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0; a row that is not whole 32-weight blocks
  either is stored as F16 (``"fp16"`` here). SmolLM2's 576-wide rows take the fallback. The mixtures
  ``q4_k_m`` / ``q5_k_m`` resolve per tensor name (:mod:`.gguf_mixture`) in the deployed layers
  (:meth:`lit_unlearn.deployment.DeployedLayer.scheme_for`); a bare weight without a name gets the base
  type (Q4_K / Q5_K).
* **Round-to-nearest groups**: a group size that does not divide a row becomes the largest divisor of the
  row not above it (``int4`` at group 128 on 576 columns: 96), so scales stay at least as fine as asked
  and every group is whole. Why not raise: real models have such rows (SmolLM2's 576, Llama's 11008 with
  group 256), and one config must deploy every layer of them; the resolved group is recorded in
  ``QuantizedTensor.scheme`` and logged per layer by the callbacks, so the format is never a guess.
  Rows shorter than the group are one group, as before.

Example::

    >>> fit_scheme("q4_k", (1536, 576)).name
    'q5_0'
    >>> fit_scheme("int4", (1536, 576)).block_size
    96
    >>> fit_scheme("int4", (1536, 512)).block_size
    128
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_unlearn.quantization.gguf_mixture import MIXTURE_BASE, gguf_fallback_type
from lit_unlearn.quantization.schemes import Scheme, get_scheme


def fit_gguf(scheme: Scheme, shape: Sequence[int]) -> Scheme:
    """The GGUF rule alone: the format llama.cpp stores a weight of ``shape`` in; other schemes unchanged."""
    if scheme.family not in ("gguf", "gguf_mixture"):
        return scheme
    row = int(shape[-1]) if len(shape) else 1
    return get_scheme(gguf_fallback_type(MIXTURE_BASE.get(scheme.name, scheme.name), row))


def fit_scheme(scheme: str | Scheme, shape: Sequence[int]) -> Scheme:
    """The format a weight of ``shape`` gets under ``scheme``: see the module docstring for the rules.

    Returns ``scheme`` itself when its blocks tile the rows.
    """
    scheme = get_scheme(scheme)
    if scheme.family in ("gguf", "gguf_mixture"):
        return fit_gguf(scheme, shape)
    row = int(shape[-1]) if len(shape) else 1
    group = scheme.block_size
    if scheme.family == "rtn" and group is not None and row > group and row % group:
        divisor = max(d for d in range(1, group + 1) if row % d == 0)
        return get_scheme(scheme, divisor)
    return scheme


def label(scheme: Scheme) -> str:
    """``"q6_k"``, ``"nf4@64"``, ``"int4@96"``: a resolved scheme in one word (its block size where it has a
    choice of one)."""
    fixed = scheme.family in ("gguf", "gguf_mixture", "half", "llm_int8") or scheme.block_size is None
    return scheme.name if fixed else f"{scheme.name}@{scheme.block_size}"


def describe(schemes: dict[str, Scheme]) -> dict[str, str]:
    """``{layer: "q6_k"}`` / ``{layer: "int4@96"}``: :func:`~lit_unlearn.deployment.layer_schemes` as plain
    strings for a logger."""
    return {name: label(s) for name, s in schemes.items()}


def summarize(asked: Scheme, schemes: dict[str, Scheme], shown: int = 3) -> str | None:
    """One line saying which layers got another format than ``asked`` (``None`` when none did)::

        int4@128 → int4@96 on 7 layers (model.layers.0.mlp.up_proj, …); int4@128 on 21

    Layers are grouped by their format, most common first, each with up to ``shown`` of their names.
    """
    groups: dict[str, list[str]] = {}
    for name, scheme in schemes.items():
        groups.setdefault(label(scheme), []).append(name)
    if set(groups) <= {label(asked)}:
        return None
    parts = []
    for got, names in sorted(groups.items(), key=lambda item: -len(item[1])):
        listed = ", ".join(names[:shown]) + (", …" if len(names) > shown else "")
        parts.append(f"{got} on {len(names)} layer{'s' if len(names) != 1 else ''} ({listed})")
    return f"{label(asked)} → " + "; ".join(parts)
