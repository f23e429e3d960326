"""Fake-quantize a whole model in place: ``quantize_model_(model, scheme, filter_fn=...)``, and the format
each of its layers gets (:func:`layer_schemes`).

The shape of torchao's ``quantize_(model, config, filter_fn)``: the trailing ``_`` says the model is
modified, the *what* is the scheme, the *where* a filter. Unlike torchao's ``filter_fn(module, fqn)``, the
filter here is ``filter_fn(name, module)``, the order of every lit-unlearn layer selection
(:data:`lit_unlearn.deployment.Modules`). The default *where* is what transformers' ``load_in_4bit`` /
``load_in_8bit`` converts: every plain ``nn.Linear`` except the output head
(:func:`lit_unlearn.quantization.default_filter`, :func:`lit_unlearn.deployment.output_head`).

Both live here, not in the pure-torch ``lit_unlearn.quantization``, because they select layers and resolve
their formats as a deployment does (:func:`~lit_unlearn.deployment.deployed_layers`,
:meth:`~lit_unlearn.deployment.DeployedLayer.scheme_for`: peft layers, 4-bit bases, GGUF mixtures per
tensor name).

Example::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    >>> quantize_model_(model, "int4")
    ['0', '2']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lit_unlearn.deployment.config import Deployment
from lit_unlearn.deployment.layers import Modules, deployed_layers
from lit_unlearn.quantization import Scheme, fake_quantize, get_scheme
from lit_unlearn.quantization.functional import check_weight, codec_for, fake_quantize_into

__all__ = ["FilterFn", "layer_schemes", "quantize_model_"]

FilterFn = Callable[[str, nn.Module], bool]


def _resolve(
    scheme: str | Scheme | Deployment, block_size: int | None, filter_fn: Modules
) -> tuple[Scheme | None, Modules]:
    """The scheme and layer selection of either argument form (``None``: full precision, nothing to do)."""
    if isinstance(scheme, Scheme):
        return get_scheme(scheme, block_size), filter_fn
    deployment = Deployment.parse(scheme, block_size, filter_fn)
    return deployment.scheme, deployment.modules


@torch.no_grad()
def quantize_model_(
    model: nn.Module,
    scheme: str | Scheme | Deployment,
    block_size: int | None = None,
    filter_fn: Modules = None,
) -> list[str]:
    """Replace each selected ``nn.Linear`` weight by its fake-quantized value, in place, layer by layer.

    Weights keep their ``Parameter`` objects, dtype and device (optimizers and hooks stay attached), and
    are overwritten chunk by chunk: no second copy of a layer is made. A weight shared by several
    selected modules is quantized once.

    Each layer is quantized in the format its deployment gets
    (:meth:`~lit_unlearn.deployment.DeployedLayer.scheme_for`): a GGUF mixture's per-tensor type
    (``q4_k_m``: ``v_proj``/``down_proj`` of some layers ``q6_k``), a group fitted to its rows
    (:func:`~lit_unlearn.quantization.fit_scheme`); :func:`layer_schemes` lists them.

    Args:
        model: The network to modify.
        scheme: A name from :data:`~lit_unlearn.quantization.SCHEMES`, a
            :class:`~lit_unlearn.quantization.Scheme`, or a :class:`~lit_unlearn.deployment.Deployment`
            (scheme, block size and layers in one); ``"full"`` quantizes nothing.
        block_size: Overrides the scheme's block (group) size.
        filter_fn: ``(qualified_name, module) -> bool`` choosing among the ``nn.Linear`` modules (or a
            regex or list of names); ``None`` uses :func:`~lit_unlearn.quantization.default_filter` and
            also skips the output head.

    Returns:
        The qualified names of the modules whose weights were quantized, in ``named_modules`` order.

    Raises:
        ValueError: for an unknown scheme or block size, or a weight that is not floating point (the model is
            then left untouched), or for non-finite weights (layers before the bad one stay quantized).
    """
    scheme, filter_fn = _resolve(scheme, block_size, filter_fn)
    if scheme is None:
        return []
    # Names as ``named_modules`` gives them (for a plain model, the deployed names).
    names = {id(m): n for n, m in model.named_modules()}
    selected = [(names[id(layer.linear)], layer.linear, layer.scheme_for(scheme))
                for layer in deployed_layers(model, filter_fn) if layer.quantized]
    # Check every weight first, so that one that cannot be quantized leaves the model untouched.
    for name, module, fitted in selected:
        check_weight(module.weight, f"{name}.weight")
        codec_for(fitted, module.weight.device).group_len(module.weight.shape)

    done: set[int] = set()
    for _, module, fitted in selected:
        weight = module.weight
        if id(weight) in done:
            continue
        if weight.is_contiguous():
            # Decoded straight into the parameter: no second copy of the layer.
            fake_quantize_into(weight, fitted, weight.data)
        else:
            weight.copy_(fake_quantize(weight, fitted))
        done.add(id(weight))
    return [name for name, _, _ in selected]


def layer_schemes(model: nn.Module, scheme: str | Scheme | Deployment, filter_fn: Modules = None) -> dict[str, Scheme]:
    """The format each quantized linear layer of ``model`` gets: ``{qualified name: Scheme}``.

    Layers are those :func:`quantize_model_` selects, named as in the deployed (merged) model, each
    resolved by :meth:`~lit_unlearn.deployment.DeployedLayer.scheme_for`: GGUF mixtures per tensor with
    llama.cpp's rule (:func:`~lit_unlearn.quantization.gguf_mixture.hf_tensor_types`, on Hugging Face Llama
    names: ``v_proj`` is ``attn_v``, ``down_proj`` ``ffn_down``), every other scheme through
    :func:`~lit_unlearn.quantization.fit_scheme`. Empty at full precision.
    """
    scheme, filter_fn = _resolve(scheme, None, filter_fn)
    if scheme is None:
        return {}
    return {layer.name: layer.scheme_for(scheme) for layer in deployed_layers(model, filter_fn) if layer.quantized}
