"""Tiny GGUF files written by the tests themselves: a Llama from a config, re-stored in ggml's block types.

Imported by the GGUF input tests (tests/gguf/conftest.py) and the GGUF export tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama, build_tokenizer, make_texts


def requantize_gguf(source: Path, target: Path, ggml_type: str) -> None:
    """Copy ``source`` to ``target`` with every decoder linear weight stored as ``ggml_type`` (gguf's own
    numpy quantizers: an oracle independent of lit-unlearn's encoder); everything else as it is."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        value = list(field.contents()) if kind == gguf.GGUFValueType.ARRAY else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if len(field.types) > 1 else None)
    qtype = gguf.GGMLQuantizationType[ggml_type.upper()]
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        parts = tensor.name.split(".")
        if parts[0] == "blk" and parts[2] in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            writer.add_tensor(tensor.name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_llama_and_tokenizer():
    tokenizer = build_tokenizer(make_texts(200, seed=0))
    return build_tiny_llama(len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama_and_tokenizer):
    """``{"f32": path, "q4_1": path}``: the tiny Llama as GGUF files, float32 and with Q4_1 decoder weights."""
    from lit_unlearn.gguf_io import write_gguf

    model, tokenizer = tiny_llama_and_tokenizer
    directory = tmp_path_factory.mktemp("tiny-gguf")
    f32 = directory / "tiny.f32.gguf"
    write_gguf(model, tokenizer, f32, "f32")
    q4_1 = directory / "tiny.Q4_1.gguf"
    requantize_gguf(f32, q4_1, "q4_1")
    return {"f32": f32, "q4_1": q4_1}
