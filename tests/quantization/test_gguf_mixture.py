"""The q4_k_m / q5_k_m mixture rule against llama.cpp itself: ``llama_model_quantize`` on tiny Llama GGUFs.

Each file is written with ``gguf.GGUFWriter`` (arch llama, float32 tensors) and quantized by the
llama.cpp library llama-cpp-python ships; every tensor's stored type is compared with
:func:`gguf_tensor_types`. The rule reads tensor names, row lengths (ne[0]) and ``llama.block_count``
only, so each weight keeps its real row length but only a few rows: the files stay small and llama.cpp
quantizes them in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from lit_unlearn.quantization import gguf_tensor_types, hf_tensor_types
from lit_unlearn.quantization.gguf_mixture import hf_to_gguf_names, use_more_bits

from .ggml_oracle import llama_quantize

ROWS = 8  # rows per weight: enough for a 2-D tensor; the rule does not read them

# (blocks, hidden, ffn, tied): 576 is SmolLM2's width (no K-quant fits: Q5_0/Q5_1/Q8_0 fallbacks), 512 and
# 1024 take K-quants; ffn 320 is whole 32-blocks only, ffn 200 not even those (F16); 12 blocks make the
# file's numeric layer order differ from the alphabetical one (blk.10 < blk.2).
CONFIGS = {
    "smollm2-width": (8, 576, 320, False),
    "smollm2-width-tied": (8, 576, 1536, True),
    "k-width-12-blocks-tied": (12, 512, 200, True),
    "wide": (4, 1024, 512, False),
}
_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _tensors(n_layers: int, hidden: int, ffn: int, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """``(gguf name, torch shape)`` in the order ``convert_hf_to_gguf.py`` writes a Llama."""
    rows = {"ffn_down": ffn}
    out = [("token_embd.weight", (ROWS, hidden))]
    for i in range(n_layers):
        out.append((f"blk.{i}.attn_norm.weight", (hidden,)))
        for name in _LINEARS:
            out.append((f"blk.{i}.{name}.weight", (ROWS, rows.get(name, hidden))))
        out.append((f"blk.{i}.ffn_norm.weight", (hidden,)))
    out.append(("output_norm.weight", (hidden,)))
    if not tied:
        out.append(("output.weight", (ROWS, hidden)))
    return out


def _write(path, n_layers: int, hidden: int, ffn: int, tensors) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(hidden // 64)
    writer.add_head_count_kv(hidden // 64)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)
    for name, shape in tensors:
        data = np.ones(shape, np.float32) if len(shape) == 1 else rng.standard_normal(shape, dtype=np.float32) * 0.02
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module", params=list(CONFIGS))
def tiny_llama_gguf(request, tmp_path_factory):
    n_layers, hidden, ffn, tied = CONFIGS[request.param]
    tensors = _tensors(n_layers, hidden, ffn, tied)
    path = tmp_path_factory.mktemp("mixture") / f"{request.param}.f32.gguf"
    _write(path, n_layers, hidden, ffn, tensors)
    return path, tensors, n_layers


@pytest.mark.parametrize("mixture", ["q4_k_m", "q5_k_m"])
def test_every_tensor_type_agrees_with_llama_quantize(tiny_llama_gguf, mixture, tmp_path):
    path, tensors, n_layers = tiny_llama_gguf
    expected = llama_quantize(path, tmp_path / f"out.{mixture}.gguf", mixture)
    ours = {name: ("f16" if t == "fp16" else t) for name, t in gguf_tensor_types(tensors, mixture, n_layers).items()}
    assert set(ours) == set(expected)
    disagreeing = {name: (expected[name], ours[name]) for name in expected if expected[name] != ours[name]}
    assert not disagreeing, f"(llama.cpp, ours): {disagreeing}"


def test_the_configurations_exercise_every_rule(tmp_path):
    """The comparison above is only as strong as the cases it covers: each rule fires in some file."""
    seen: set[str] = set()
    for n_layers, hidden, ffn, tied in CONFIGS.values():
        types = gguf_tensor_types(_tensors(n_layers, hidden, ffn, tied), "q4_k_m", n_layers)
        seen |= {f"{name.split('.')[-2] if name.startswith('blk') else name}:{t}" for name, t in types.items()}
    for rule in ("attn_v:q6_k", "attn_v:q8_0", "ffn_down:q6_k", "ffn_down:q8_0", "ffn_down:fp16", "attn_q:q5_0",
                 "attn_q:q4_k", "output.weight:q8_0", "output.weight:q6_k", "token_embd.weight:q6_k",
                 "token_embd.weight:q8_0", "token_embd.weight:q5_0", "attn_norm:f32"):
        assert rule in seen, rule
    # Twelve blocks: llama.cpp gives layers 0, 3, 6, 9, 10, 11 more bits, in numeric (not name) order.
    assert [i for i in range(12) if use_more_bits(i, 12)] == [0, 3, 6, 9, 10, 11]


def test_hugging_face_names_get_the_types_of_their_gguf_tensors():
    """hf_tensor_types on a state dict's names (any order) equals gguf_tensor_types on the file's."""
    n_layers, hidden, ffn = 12, 512, 200
    hf_of = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    tensors = [(n, s) for n, s in _tensors(n_layers, hidden, ffn, tied=False) if len(s) == 2]
    hf_shapes = {"model.embed_tokens.weight": (ROWS, hidden), "lm_head.weight": (ROWS, hidden)}
    for name, shape in tensors:
        if name.startswith("blk."):
            _, i, part, _ = name.split(".")
            hf_shapes[f"model.layers.{i}.{hf_of[part]}.weight"] = shape
    shuffled = dict(sorted(hf_shapes.items(), reverse=True))  # state-dict order must not matter
    by_hf = hf_tensor_types(shuffled, "q4_k_m")
    names = hf_to_gguf_names(hf_shapes, n_layers)
    by_gguf = gguf_tensor_types(tensors, "q4_k_m", n_layers)
    assert {names[hf]: t for hf, t in by_hf.items()} == by_gguf
    assert by_hf["model.layers.10.self_attn.v_proj.weight"] == "q6_k"
    assert by_hf["model.layers.2.self_attn.v_proj.weight"] == "q4_k"
