"""Which layers a deployment quantizes, by name and type alone: :func:`default_filter`.

What transformers' ``load_in_4bit`` / ``load_in_8bit`` converts: every plain ``nn.Linear`` except the
output head. The model-level verbs that apply it (``quantize_model_``, ``layer_schemes``) live in
:mod:`lit_unlearn.deployment`, which also knows peft layers, 4-bit bases and GGUF mixtures; this module
stays pure torch.

Example::

    >>> from torch import nn
    >>> default_filter("model.layers.0.mlp.up_proj", nn.Linear(4, 4)), default_filter("lm_head", nn.Linear(4, 4))
    (True, False)
"""

from __future__ import annotations

from torch import nn

# Output-head names of transformers' causal-LM classes (GPT-NeoX calls it embed_out).
OUTPUT_HEAD_NAMES: tuple[str, ...] = ("lm_head", "embed_out")


def default_filter(name: str, module: nn.Module) -> bool:
    """Whether a deployment with transformers + bitsandbytes would quantize this module.

    True for a module whose type is exactly ``nn.Linear`` (as in ``replace_with_bnb_linear``; a peft
    LoRA layer after ``merge_and_unload`` is one), except:

    * the output head, recognised by name (:data:`OUTPUT_HEAD_NAMES`); ``quantize_model_`` also
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
