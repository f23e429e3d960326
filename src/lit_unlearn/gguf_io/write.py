"""Write a Llama-architecture causal LM as one ``.gguf`` file that llama.cpp loads, tokenizer included.

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel``) and ``llama-quantize`` would write,
from the model in memory:

* Tensor names are GGUF's (``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n_blocks)``:
  ``model.layers.0.self_attn.q_proj.weight`` → ``blk.0.attn_q.weight``).
* The query and key rows are permuted as ``LlamaModel.permute`` does: llama.cpp applies rotary embeddings
  to adjacent pairs (GPT-J style) while transformers rotates the two halves of each head, so within each
  head the rows ``[0, d/2, 1, d/2+1, ...]`` are interleaved. transformers undoes this on load.
* Tensor data: norms in f32 (llama.cpp keeps 1-D tensors in f32); the decoder's linear weights in the
  requested format, encoded in ggml's block layout by :func:`lit_unlearn.quantization.gguf_bytes`;
  the token embedding and the untied output head in the type the base stored them in when the base was a
  ``.gguf``, else in f16 (f32 for an f32 export): the deployment lit-unlearn measures quantizes the
  decoder's linear layers, not the embedding and head. The mixtures ``q4_k_m``/``q5_k_m`` take
  llama-quantize's type for every tensor (:func:`lit_unlearn.quantization.gguf_tensor_types`).
* Metadata: when the base was a ``.gguf`` file, its key/value metadata (architecture, hyper-parameters,
  tokenizer, chat template) is copied from that file and only the tensor data is replaced; otherwise the
  Llama hyper-parameters come from the config and a byte-level BPE tokenizer (``tokenizer.ggml.model =
  gpt2``) from the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lit_unlearn.gguf_io.load import GGUFBase, _is_decoder_linear
from lit_unlearn.quantization.gguf_formats import GGUF_FORMAT_RECORDS

__all__ = ["GGUF_EXPORT_FORMATS", "GGUF_FORMATS", "gguf_tensor_plan", "permute_rotary_rows", "write_gguf"]

_MIXTURES = ("q4_k_m", "q5_k_m")
_FLOAT_TYPES = ("f32", "f16")
#: Formats a model can be written in: GGUF's float and block types (the registry's, by bits per weight)
#: and llama-quantize's two K mixtures.
GGUF_FORMATS: tuple[str, ...] = (*_FLOAT_TYPES, *(f.name for f in GGUF_FORMAT_RECORDS), *_MIXTURES)
#: What ``lit-unlearn export --gguf`` takes: a format, or ``base`` (the base's own recorded format).
GGUF_EXPORT_FORMATS: tuple[str, ...] = (*GGUF_FORMATS, "base")
# Weights per block along a row (ggml's QK4_0 … QK_K); a row must hold whole blocks.
_BLOCK = {f.name: f.block_weights for f in GGUF_FORMAT_RECORDS}
# general.file_type of each format (llama.cpp's llama_ftype); a uniform K-quant file has no own value.
_FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M"} | {
    f.name: f.file_type for f in GGUF_FORMAT_RECORDS}
# Written by the writer itself, or describing the tensors rather than the model.
_SKIPPED_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.alignment")


def permute_rotary_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order of a query/key projection (``LlamaModel.permute``).

    Args:
        weight: ``(n_head · head_dim, in_features)``, rows in transformers' half-split rotary order.
        n_head: Heads of this projection (``num_key_value_heads`` for the key).

    Returns:
        The same rows, within each head ``[0, d/2, 1, d/2 + 1, …]``: the interleaved pairs llama.cpp rotates.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _check_llama(model: nn.Module) -> Any:
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ValueError(
            f"GGUF export writes Llama-architecture models; this one is {getattr(config, 'model_type', None)!r}. "
            "Convert it with llama.cpp's convert_hf_to_gguf.py from the exported safetensors instead."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"The model uses rope scaling {rope.get('rope_type')!r}; GGUF export writes unscaled rotary embeddings "
            "only. Convert it with llama.cpp's convert_hf_to_gguf.py from the exported safetensors instead."
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("GGUF export writes Llama models without linear biases; this one has them.")
    return config


def _gguf_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(GGUF name, float32 tensor in llama.cpp's layout)`` for every tensor llama.cpp reads."""
    import gguf

    config = _check_llama(model)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd as the output head when there is no output.weight
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"Weight {key!r} has no GGUF name in llama.cpp's Llama layout.")
        tensor = value.detach().to("cpu", torch.float32)
        if key.endswith("self_attn.q_proj.weight"):
            tensor = permute_rotary_rows(tensor, config.num_attention_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            tensor = permute_rotary_rows(tensor, config.num_key_value_heads)
        yield name, tensor


def gguf_tensor_plan(
    shapes: dict[str, tuple[int, ...]], fmt: str, base: GGUFBase | None = None
) -> dict[str, str]:
    """The GGUF type each tensor is written in, for an export to ``fmt``.

    Args:
        shapes: GGUF tensor name → shape ``(rows, row_length)`` (1-D for norms).
        fmt: One of :data:`GGUF_FORMATS`.
        base: The GGUF file the model was loaded from, whose embedding/head types are kept.

    Raises:
        ValueError: if a decoder weight's rows do not hold whole blocks of ``fmt``.
    """
    if fmt in _MIXTURES:
        from lit_unlearn.quantization import gguf_tensor_types

        # llama-quantize's own choice for every tensor, embedding and head included (its F16 is "fp16").
        n_blocks = 1 + max(int(name.split(".")[1]) for name in shapes if name.startswith("blk."))
        types = gguf_tensor_types(list(shapes.items()), fmt, n_blocks)
        return {name: "f16" if kind == "fp16" else kind for name, kind in types.items()}
    plan = {name: fmt for name in shapes if _is_decoder_linear(name)}
    for name, shape in shapes.items():
        if name in plan:
            continue
        if len(shape) == 1:
            plan[name] = "f32"
        elif base is not None and name in base.tensor_types:
            plan[name] = base.tensor_types[name]
        else:
            plan[name] = "f32" if fmt == "f32" else "f16"
    for name, ggml_type in plan.items():
        block = _BLOCK.get(ggml_type)
        if block is not None and shapes[name][-1] % block:
            raise ValueError(
                f"Tensor {name!r} has rows of {shapes[name][-1]} weights, not whole {ggml_type} blocks of {block}; "
                f"`--gguf {fmt}` cannot store it. Choose a format with {32 if block == 256 else 1}-weight "
                "blocks (q8_0, q4_0, q4_1, q5_0, q5_1, or f16)."
            )
    return plan


def _encode(tensor: torch.Tensor, ggml_type: str, name: str) -> tuple[np.ndarray, Any]:
    """``(array, raw GGML type or None)`` as ``GGUFWriter.add_tensor`` takes them."""
    import gguf

    if ggml_type == "f32":
        return tensor.numpy().astype(np.float32), None
    if ggml_type == "f16":
        return tensor.numpy().astype(np.float16), None
    if ggml_type == "bf16":
        return tensor.numpy().astype(np.float32), None  # never a decoder weight here: keep it exact
    from lit_unlearn.quantization import gguf_bytes

    data = gguf_bytes(tensor, ggml_type)
    return np.ascontiguousarray(data, dtype=np.uint8), gguf.GGMLQuantizationType[ggml_type.upper()]


def _copy_metadata(writer: Any, source: str | Path) -> None:
    """Every key/value of ``source`` but the file-layout ones, as they are: hyper-parameters, tokenizer, template."""
    import gguf

    reader = gguf.GGUFReader(source)
    for field in reader.fields.values():
        if field.name.startswith(_SKIPPED_KEYS) or not field.types:
            continue
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, list(field.contents()), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, field.contents(), main)


def _check_source(model: nn.Module, source: str | Path) -> None:
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.get_field("general.architecture")
    blocks = reader.get_field("llama.block_count")
    if arch is None or arch.contents() != "llama" or blocks is None or int(blocks.contents()) != model.config.num_hidden_layers:
        raise ValueError(
            f"The base GGUF {str(source)!r} is not a Llama model with {model.config.num_hidden_layers} blocks like "
            "the exported one; export the model it was trained from."
        )


def _tokenizer_vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    """GGUF's ``gpt2`` tokenizer: tokens by id (padded to ``vocab_size``), token types, merges, pre-tokenizer."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style); {type(tokenizer).__name__} is "
            f"{model.get('type', 'not a fast tokenizer')}. Load the base from a .gguf file (its tokenizer is "
            "copied), or convert the exported safetensors with llama.cpp's convert_hf_to_gguf.py."
        )
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    added = {index for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[index])
            if index in special:
                types.append(gguf.TokenType.CONTROL)
            elif index in added:
                types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    # llama.cpp has a fixed set of pre-tokenizers; GPT-2's regex is the ByteLevel pre-tokenizer's own.
    pre = spec.get("pre_tokenizer") or {}
    pre_name = "gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "default"
    return tokens, [int(t) for t in types], merges, pre_name


def _write_llama_metadata(writer: Any, model: nn.Module, tokenizer: Any) -> None:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(str(getattr(config, "name_or_path", "") or "lit-unlearn export"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)

    tokens, types, merges, pre = _tokenizer_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for what, index in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                        ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if index is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                             "pad": "add_pad_token_id"}[what])(int(index))
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


@torch.no_grad()
def write_gguf(
    model: nn.Module, tokenizer: Any, path: str | Path, fmt: str, base: GGUFBase | None = None
) -> dict[str, str]:
    """Write ``model`` (a merged ``LlamaForCausalLM``) to ``path`` in ``fmt``; return the type of each tensor.

    Args:
        model: The model to write, in any float dtype (its values are taken as float32).
        tokenizer: Its tokenizer; written into the metadata unless ``base`` is given.
        path: The ``.gguf`` file to write.
        fmt: One of :data:`GGUF_FORMATS` (``base`` is resolved by the caller).
        base: The GGUF file the model was loaded from: its metadata is copied (when the file is still
            there; else it is written from the model and ``tokenizer``) and its embedding/head types kept.

    Raises:
        ValueError: for an unknown format, a model that is not Llama-shaped, rows that are not whole blocks
            of ``fmt``, or a tokenizer GGUF cannot describe.
    """
    import gguf

    if fmt not in GGUF_FORMATS:
        raise ValueError(f"GGUF format {fmt!r} is not supported; choose one of {', '.join(map(repr, GGUF_FORMATS))}.")
    tensors = dict(_gguf_tensors(model))
    plan = gguf_tensor_plan({name: tuple(t.shape) for name, t in tensors.items()}, fmt, base)
    path = Path(path)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        if base is not None and Path(base.path).is_file():
            _check_source(model, base.path)
            _copy_metadata(writer, base.path)
        else:
            _write_llama_metadata(writer, model, tokenizer)
        writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[fmt]]))
        for name, tensor in tensors.items():
            data, raw_dtype = _encode(tensor, plan[name], name)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return plan
