"""Fake-quantize a whole model in place: ``quantize_model_(model, scheme, filter_fn=...)``.

The shape of torchao's ``quantize_(model, config, filter_fn)``: the trailing ``_`` says the model is
modified, the *what* is the scheme, the *where* a filter. Unlike torchao's ``filter_fn(module, fqn)``, the
filter here is ``filter_fn(name, module)``, the order of every lit-unlearn layer selection
(:data:`lit_unlearn.deployment.Modules`). The default *where* is what transformers' ``load_in_4bit`` /
``load_in_8bit`` converts: every plain ``nn.Linear`` except the output head
(:func:`lit_unlearn.deployment.output_head`).

Example::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    >>> quantize_model_(model, "int4")
    ['0', '2']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lit_unlearn.quantization.functional import check_weight, codec_for, fake_quantize, fake_quantize_into
from lit_unlearn.quantization.schemes import Scheme, get_scheme

FilterFn = Callable[[str, nn.Module], bool]

# Output-head names of transformers' causal-LM classes (GPT-NeoX calls it embed_out).
OUTPUT_HEAD_NAMES: tuple[str, ...] = ("lm_head", "embed_out")


def default_filter(name: str, module: nn.Module) -> bool:
    """Whether a deployment with transformers + bitsandbytes would quantize this module.

    True for a module whose type is exactly ``nn.Linear`` (as in ``replace_with_bnb_linear``; a peft
    LoRA layer after ``merge_and_unload`` is one), except:

    * the output head, recognised by name (:data:`OUTPUT_HEAD_NAMES`); :func:`quantize_model_` also
      skips whatever ``model.get_output_embeddings()`` returns, as transformers does;
    * peft adapter matrices (a ``lora_*`` name component): peft keeps them in full precision on top of
      a quantized base.

    Already quantized layers (``bnb.nn.Linear4bit`` and other ``nn.Linear`` subclasses) are left alone.
    """
    if type(module) is not nn.Linear:
        return False
    parts = name.split(".")
    if parts[-1] in OUTPUT_HEAD_NAMES:
        return False
    return not any(part.startswith("lora_") for part in parts)


@torch.no_grad()
def quantize_model_(
    model: nn.Module,
    scheme: str | Scheme | Any,
    block_size: int | None = None,
    filter_fn: FilterFn | None = None,
) -> list[str]:
    """Replace each selected ``nn.Linear`` weight by its fake-quantized value, in place, layer by layer.

    Weights keep their ``Parameter`` objects, dtype and device (optimizers and hooks stay attached), and
    are overwritten chunk by chunk: no second copy of a layer is made. A weight shared by several
    selected modules is quantized once.

    Each layer is quantized in the format its deployment gets
    (:meth:`~lit_unlearn.deployment.DeployedLayer.scheme_for`): a GGUF mixture's per-tensor type
    (``q4_k_m``: ``v_proj``/``down_proj`` of some layers ``q6_k``), a group fitted to its rows
    (:func:`~lit_unlearn.quantization.fit_scheme`); :func:`~lit_unlearn.quantization.layer_schemes` lists them.

    Args:
        model: The network to modify.
        scheme: A name from :data:`~lit_unlearn.quantization.SCHEMES`, a :class:`Scheme`, or a
            :class:`lit_unlearn.deployment.Deployment` (scheme, block size and layers in one).
        block_size: Overrides the scheme's block (group) size.
        filter_fn: ``(qualified_name, module) -> bool`` choosing among the ``nn.Linear`` modules (or a
            regex or list of names); ``None`` uses :func:`default_filter` and also skips the output head.

    Returns:
        The qualified names of the modules whose weights were quantized, in ``named_modules`` order.

    Raises:
        ValueError: for an unknown scheme or block size, or a weight that is not floating point (the model is
            then left untouched), or for non-finite weights (layers before the bad one stay quantized).
    """
    from lit_unlearn.deployment import Deployment, as_deployment, deployed_layers

    if isinstance(scheme, Deployment):
        deployment = as_deployment(scheme, block_size, filter_fn)
        if deployment.scheme is None:
            return []
        scheme, filter_fn = deployment.scheme, deployment.modules
    scheme = get_scheme(scheme, block_size)
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
