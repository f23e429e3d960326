"""fit_scheme / layer_schemes / summarize: the format each layer is deployed in, and detect_format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_unlearn.deployment import layer_schemes
from lit_unlearn.quantization import (
    describe_layer_schemes,
    detect_format,
    fake_quantize,
    fit_scheme,
    get_scheme,
    on_grid,
)
from lit_unlearn.quantization.fit import summarize


def test_a_group_that_does_not_divide_a_row_becomes_its_largest_divisor_below():
    assert fit_scheme("int4", (1536, 576)).block_size == 96  # SmolLM2's width: 576 = 6 · 96
    assert fit_scheme("int4-asym", (8, 200)).block_size == 100
    assert fit_scheme(get_scheme("rtn8", 48), (8, 100)).block_size == 25


def test_a_group_that_divides_the_row_is_kept():
    assert fit_scheme("int4", (1536, 512)) == get_scheme("int4")
    assert fit_scheme("int4", (8, 64)) == get_scheme("int4"), "a row shorter than the group is one group"
    assert fit_scheme("nf4", (3, 5)) == get_scheme("nf4"), "bitsandbytes blocks run over the flattened weight"
    assert fit_scheme("int8", (3, 5)) == get_scheme("int8")


def test_gguf_types_take_llama_cpp_fallbacks():
    assert [fit_scheme(k, (8, 576)).name for k in ("q4_k", "q5_k", "q6_k", "q4_k_m")] == ["q5_0", "q5_1", "q8_0", "q5_0"]
    assert fit_scheme("q4_k", (8, 512)).name == "q4_k"
    assert fit_scheme("q4_0", (8, 100)).name == "fp16", "no 32-block fits: llama.cpp stores F16"


class _Llama(nn.Module):
    """The names of a Hugging Face Llama (what the mixture rule reads), layers of any width."""

    def __init__(self, n_layers: int, hidden: int, ffn: int):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList()
        for _ in range(n_layers):
            block = nn.Module()
            block.self_attn = nn.Module()
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(block.self_attn, name, nn.Linear(hidden, 8 if name != "o_proj" else hidden, bias=False))
            block.mlp = nn.Module()
            block.mlp.gate_proj = nn.Linear(hidden, ffn, bias=False)
            block.mlp.up_proj = nn.Linear(hidden, ffn, bias=False)
            block.mlp.down_proj = nn.Linear(ffn, 8, bias=False)
            self.model.layers.append(block)


def test_layer_schemes_name_each_layers_effective_scheme():
    model = _Llama(2, 576, 512)
    schemes = describe_layer_schemes(layer_schemes(model, "int4"))
    assert schemes["model.layers.0.self_attn.q_proj"] == "int4@96"
    assert schemes["model.layers.1.mlp.down_proj"] == "int4@128"  # a 512-wide row keeps 128
    line = summarize(get_scheme("int4"), layer_schemes(model, "int4"))
    assert line.startswith("int4@128 → int4@96 on 12 layers (model.layers.0.self_attn.q_proj, ") and "int4@128 on 2" in line


def test_summarize_is_quiet_when_every_layer_keeps_the_scheme():
    model = _Llama(2, 512, 256)
    assert set(describe_layer_schemes(layer_schemes(model, "int4")).values()) == {"int4@128"}
    assert summarize(get_scheme("int4"), layer_schemes(model, "int4")) is None


def test_mixture_types_follow_llama_quantize_per_layer():
    # 8 blocks: use_more_bits picks layers 0, 3, 6, 7 for attn_v and ffn_down (q6_k).
    schemes = describe_layer_schemes(layer_schemes(_Llama(8, 256, 512), "q4_k_m"))
    assert [i for i in range(8) if schemes[f"model.layers.{i}.self_attn.v_proj"] == "q6_k"] == [0, 3, 6, 7]
    assert [i for i in range(8) if schemes[f"model.layers.{i}.mlp.down_proj"] == "q6_k"] == [0, 3, 6, 7]
    assert schemes["model.layers.1.self_attn.v_proj"] == schemes["model.layers.1.mlp.gate_proj"] == "q4_k"
    narrow = describe_layer_schemes(layer_schemes(_Llama(8, 576, 512), "q5_k_m"))
    assert narrow["model.layers.0.self_attn.v_proj"] == "q8_0" and narrow["model.layers.1.self_attn.q_proj"] == "q5_1"


@pytest.mark.parametrize("fmt", ["nf4", "fp4", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q6_k"])
def test_weights_on_a_grid_are_detected(fmt):
    g = torch.Generator().manual_seed(0)
    weights = [fake_quantize(torch.randn(16, 256, generator=g) * 0.02, fmt) for _ in range(2)]
    assert all(on_grid(w, fmt) for w in weights)
    assert detect_format(weights) == fmt


def test_weights_on_no_grid_are_not_detected():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g) * 0.02
    assert not on_grid(w, "q4_1") and detect_format([w]) is None
    # One layer off the grid is enough: every weight must sit on it.
    assert detect_format([fake_quantize(w, "q4_1"), w]) is None
    assert detect_format([]) is None


def test_q5_k_is_not_its_own_fixed_point():
    """ggml's Q5_K search does not give back a Q5_K-decoded weight: such a model is not found on its grid
    (measured, not assumed; the other formats above are fixed points)."""
    w = fake_quantize(torch.randn(16, 256, generator=torch.Generator().manual_seed(0)) * 0.02, "q5_k")
    assert not on_grid(w, "q5_k")


def test_rows_no_gguf_block_fits_say_nothing_about_the_format():
    w = torch.randn(4, 100).half().float()  # exactly representable in fp16: F16 is what llama.cpp would store
    assert not on_grid(w, "q4_0") and on_grid(w, "fp16")
