"""Which concrete format a layer gets when a scheme's block does not tile its rows.

Two rules, one function (:func:`fit_scheme`), and a per-model listing the callbacks can log
(:func:`layer_schemes`):

* **GGUF** (applied automatically by ``quantize``, ``fake_quantize``, ``survival_stats`` and
  ``quantize_model_``): what llama.cpp's quantize tool does. A K-quant on rows that are not whole
  256-weight super-blocks is stored as Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0; a row that is not whole 32-weight
  blocks either is stored as F16 (``"fp16"`` here). SmolLM2's 576-wide rows take the fallback. The
  mixtures ``q4_k_m`` / ``q5_k_m`` resolve per tensor name (:mod:`.gguf_mixture`) in
  :func:`layer_schemes` and ``quantize_model_``; without a name, to their base type (Q4_K / Q5_K).
* **Round-to-nearest groups** (on request, through this function): a group size that does not divide a
  row becomes the largest divisor of the row not above it (``int4`` at group 128 on 576 columns: 96), so
  scales stay at least as fine as asked and every group is whole. ``quantize`` itself keeps raising for
  such a group: a silent change of group size would make two runs with one config differ in format.

Example::

    >>> fit_scheme("q4_k", (1536, 576)).name
    'q5_0'
    >>> fit_scheme("int4", (1536, 576)).block_size
    96
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lit_unlearn.quantization.gguf_mixture import MIXTURE_BASE, gguf_fallback_type, hf_tensor_types
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


def layer_schemes(
    model: nn.Module, scheme: str | Scheme | Any, filter_fn: Callable[[str, nn.Module], bool] | None = None
) -> dict[str, Scheme]:
    """The format each quantized linear layer of ``model`` gets: ``{qualified name: Scheme}``.

    Layers are those :func:`~lit_unlearn.quantization.quantize_model_` selects. GGUF mixtures resolve
    per tensor with llama.cpp's rule (:func:`~lit_unlearn.quantization.gguf_mixture.hf_tensor_types`, on
    Hugging Face Llama names: ``v_proj`` is ``attn_v``, ``down_proj`` ``ffn_down``); every other scheme
    through :func:`fit_scheme`. A callback can log the result once at the start of a fit.
    """
    from lit_unlearn.deployment import Deployment, as_deployment, deployed_layers

    if isinstance(scheme, Deployment):
        deployment = as_deployment(scheme, None, filter_fn)
        if deployment.scheme is None:
            return {}
        scheme, filter_fn = deployment.scheme, deployment.modules
    scheme = get_scheme(scheme)
    names = {id(m): n for n, m in model.named_modules()}
    layers = [(names[id(layer.linear)], layer.linear) for layer in deployed_layers(model, filter_fn) if layer.quantized]
    if scheme.family != "gguf_mixture":
        return {name: fit_scheme(scheme, module.weight.shape) for name, module in layers}
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.dim() >= 2}
    types = hf_tensor_types(shapes, scheme.name)
    out: dict[str, Scheme] = {}
    for name, module in layers:
        chosen = types.get(f"{name}.weight")
        out[name] = fit_gguf(scheme, module.weight.shape) if chosen is None else get_scheme(chosen)
    return out


def describe(schemes: dict[str, Scheme]) -> dict[str, str]:
    """``{layer: "q6_k"}`` / ``{layer: "int4@96"}``: :func:`layer_schemes` as plain strings for a logger."""
    return {name: s.name if s.family in ("gguf", "half", "llm_int8") else f"{s.name}@{s.block_size}"
            for name, s in schemes.items()}
