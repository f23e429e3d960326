"""``lit-unlearn export --gguf``: the merged model as one .gguf file that llama.cpp runs, checked against
our own fake-quantized model on the same token ids.

Tolerance. llama.cpp does not compute with the stored weights in float32: for every quantized weight type
its CPU dot products first quantize the activations (Q8_0 blocks of 32 for the legacy types, Q8_K blocks of
256 for the K types) and for f16 weights round the activations to f16, and it sums in another order. On
these models that moves the logits by up to about 1.5% of their RMS; the tests allow 3%. For the 4-bit
formats the same comparison against the unquantized model, or against another 4-bit grid, is an order of
magnitude further off (asserted below), so the tolerance still tells the right grid from a wrong one. For
q8_0 and the float formats it cannot: their weight rounding is smaller than llama.cpp's activation
rounding, which is exactly why 8 bits keep what full precision keeps.
"""

from __future__ import annotations

import copy
from pathlib import Path

import gguf
import llama_cpp  # imported directly: a missing llama-cpp-python must fail these tests, not skip them
import numpy as np
import pytest
import torch

from lit_unlearn import UnlearningModule
from lit_unlearn.adapters import LoRA
from lit_unlearn.export import export, main
from lit_unlearn.gguf_io import GGUFBase
from lit_unlearn.gguf_io.llama_cpp import load_llama
from lit_unlearn.quantization import fake_quantize, get_scheme
from tests.conftest import build_tokenizer, make_texts
from tests.gguf.tiny_gguf import tiny_gguf, tiny_llama_and_tokenizer  # noqa: F401  (fixtures)

TEXT = "alpha beta river stone north mayor harbour council bridge."
QUANTIZED_RTOL = 0.03
FLOAT_RTOL = 2e-3


def _llama(path: Path) -> llama_cpp.Llama:
    return load_llama(path, logits_all=True, n_threads=1, n_ctx=64, verbose=False)


def _llama_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_greedy(llm: llama_cpp.Llama, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def _rel_rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2)))


def _as_stored(model: torch.nn.Module, tensor_types: dict[str, str]) -> torch.nn.Module:
    """``model`` with every weight fake-quantized to the GGUF type the file stores it in (our quantizers)."""
    stored = copy.deepcopy(model).eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    with torch.no_grad():
        for key, param in stored.named_parameters():
            kind = tensor_types.get(names.get_name(key, try_suffixes=(".weight",)))
            if kind is None or kind == "f32":
                continue
            param.copy_(fake_quantize(param, get_scheme("fp16" if kind == "f16" else kind)))
    return stored


def _reference_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def adapter_256(tmp_path_factory):
    """A LoRA adapter with a random update on a tiny Llama whose rows are whole 256-blocks (K types fit)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gguf-export")
    tokenizer = build_tokenizer(make_texts(200, seed=0))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # confident logits: greedy decoding has clear winners
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    module = UnlearningModule(str(root / "base"), objective="ga", lora=LoRA(r=4))
    module.configure_model()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return module.save_pretrained(root / "adapter"), tokenizer


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m", "f16", "f32"])
def test_llama_cpp_runs_the_export_with_our_fake_quantized_logits(adapter_256, tmp_path, fmt):
    from transformers import AutoModelForCausalLM

    adapter, tokenizer = adapter_256
    report = export(str(adapter), str(tmp_path / "out"), gguf=fmt, schemes=["int8"], progress=False)
    path = Path(report.gguf_file)
    assert path.name == f"model.{fmt}.gguf" and report.gguf_format == fmt
    if fmt == "f32":
        assert set(report.layers) == {"int8"}
    else:  # the survival report covers the file's format
        assert {"f16": "fp16"}.get(fmt, fmt) in report.layers
    stored_types = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(path).tensors}
    assert stored_types == report.gguf_tensor_types

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    deployed = _as_stored(merged, report.gguf_tensor_types)
    ids = tokenizer(TEXT).input_ids
    llm = _llama(path)
    got, want = _llama_logits(llm, ids), _reference_logits(deployed, ids)
    assert _rel_rms(got, want) < (FLOAT_RTOL if fmt in ("f16", "f32") else QUANTIZED_RTOL)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids
    with torch.no_grad():
        expected = deployed.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    assert _llama_greedy(llm, ids, 6) == expected
    if fmt in ("q4_0", "q4_1", "q4_k"):
        # The tolerance separates grids: the unquantized model, or another 4-bit grid, is far outside it.
        assert _rel_rms(got, _reference_logits(merged, ids)) > 3 * QUANTIZED_RTOL
        other = {name: ("q4_0" if kind == "q4_1" else "q4_1") if kind.startswith("q4") else kind
                 for name, kind in report.gguf_tensor_types.items()}
        assert _rel_rms(got, _reference_logits(_as_stored(merged, other), ids)) > 3 * QUANTIZED_RTOL
    llm.close()


def test_base_format_re_quantizes_to_the_gguf_base_and_copies_its_metadata(tiny_gguf, tmp_path):
    source = Path(tiny_gguf["q4_1"])
    module = UnlearningModule(str(source), objective="ga", lora=LoRA(r=4))
    module.configure_model()
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapter = module.save_pretrained(tmp_path / "adapter")

    report = main([str(adapter), str(tmp_path / "out"), "--gguf", "base", "--schemes", "int8", "--no-progress"])
    assert report.gguf_format == "q4_1" and "q4_1" in report.layers
    written = gguf.GGUFReader(report.gguf_file)
    base = GGUFBase.from_file(source)
    assert report.gguf_tensor_types == base.tensor_types  # q4_1 decoder, the base's own f32 embedding and head
    original = gguf.GGUFReader(source)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.context_length", "llama.rope.freq_base"):
        assert written.get_field(key).contents() == original.get_field(key).contents(), key
    assert written.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_1
    llm = _llama(Path(report.gguf_file))
    tokenizer = module.tokenizer
    ids = tokenizer(TEXT).input_ids
    from transformers import AutoModelForCausalLM

    deployed = _as_stored(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), report.gguf_tensor_types)
    assert _rel_rms(_llama_logits(llm, ids), _reference_logits(deployed, ids)) < QUANTIZED_RTOL
    llm.close()


def test_full_parameter_model_exports_against_its_gguf_base(tiny_gguf, tmp_path):
    source = str(tiny_gguf["q4_1"])
    module = UnlearningModule(source, objective="ga", lora=None)
    module.configure_model()
    with torch.no_grad():
        module.model.model.layers[1].mlp.down_proj.weight.add_(0.01)
    saved = module.save_pretrained(tmp_path / "model")
    report = export(str(saved), str(tmp_path / "out"), base=source, gguf="base", schemes=["int8"], progress=False)
    assert report.gguf_format == "q4_1"
    # ΔW is the update against the dequantized .gguf base: only the touched layer moved.
    moved = [name for name, s in report.layers["q4_1"].items() if s.delta_sq > 0]
    assert moved == ["model.layers.1.mlp.down_proj"]
    _llama(Path(report.gguf_file)).close()


def test_base_format_without_a_gguf_base_is_refused(adapter_256, tmp_path):
    adapter, _ = adapter_256
    with pytest.raises(ValueError, match="not loaded from a .gguf"):
        export(str(adapter), str(tmp_path / "out"), gguf="base", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_gguf_format_is_refused(adapter_256, tmp_path):
    adapter, _ = adapter_256
    with pytest.raises(ValueError, match="'q4_1'"):
        export(str(adapter), str(tmp_path / "out"), gguf="q3_k", progress=False)


def test_rows_that_are_not_whole_k_blocks_are_refused(tiny_gguf, tmp_path):
    # The 32-wide tiny model cannot hold 256-weight Q4_K super-blocks; q4_1's 32-blocks fit (previous test).
    module = UnlearningModule(str(tiny_gguf["f32"]), objective="ga", lora=LoRA(r=4))
    module.configure_model()
    adapter = module.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="whole q4_k blocks"):
        export(str(adapter), str(tmp_path / "out"), gguf="q4_k", schemes=["int8"], progress=False)


def test_non_llama_models_are_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lit_unlearn.gguf_io import write_gguf

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="'gpt2'"):
        write_gguf(model, None, tmp_path / "m.gguf", "f32")
