"""`lit-unlearn export`: merge a saved adapter, save it (also as bitsandbytes 4-bit), report survival."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.export import export, main
from lit_unlearn.quantization import fake_quantize, quantize, survival_stats
from lit_unlearn.quantization.bnb_decode import (
    cpu_has_avx512,
    dequantize_4bit_as_cpu,
    dequantize_4bit_as_cuda,
)

STAT_KEYS = {
    "changed", "below_half_step", "retained", "cosine", "rel_error", "delta_norm", "qdelta_norm", "numel"
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2], [1, 50, 60, 70, 80, 90, 100, 110]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """An adapter saved by peft, with a nonzero ``lora_B`` (a trained-looking update); and its PeftModel."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = apply_lora(base, LoRA(r=4, alpha=8, dropout=0.0))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    return str(path), peft_model.eval()


def test_merged_model_reproduces_the_adapter_and_report_describes_it(tiny_model_dir, adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    path, peft_model = adapter
    report = export(path, str(tmp_path / "merged"), progress=False)
    out = tmp_path / "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").is_file(), "an adapter saved without tokenizer takes the base's"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(merged), logits(peft_model))

    # The statistics are those of the exported weights: W0 = base, W1 = merged, layer by layer.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = report.layers["nf4"]
    assert len(layers) == 2 * len(PROJECTIONS) and all(name.endswith(PROJECTIONS) for name in layers)
    for name, stats in layers.items():
        expected = survival_stats(base.get_submodule(name).weight, merged.get_submodule(name).weight, "nf4")
        assert stats == expected, name


def test_survival_json_and_markdown(adapter, tmp_path):
    path, _ = adapter
    report = export(path, str(tmp_path), schemes=["nf4", "int8"], worst=3, overwrite=True, progress=False)
    saved = json.loads((tmp_path / "survival.json").read_text())
    assert saved == json.loads(json.dumps(report.as_dict()))
    assert set(saved) == {
        "source", "base", "kind", "output_dir", "quantized_dir", "quantize", "avx512_misdecoded", "base_quantization",
        "schemes", "gguf_file", "gguf_format", "gguf_tensor_types",
    }
    assert saved["avx512_misdecoded"] == [], "no 4-bit copy was written"
    assert saved["gguf_file"] is None and saved["gguf_tensor_types"] == {}, "no .gguf was asked for"
    assert saved["kind"] == "lora" and saved["quantized_dir"] is None
    assert list(saved["schemes"]) == ["nf4", "int8"]
    for scheme in saved["schemes"].values():
        assert set(scheme) == {"total", "worst_layers", "layers"}
        assert set(scheme["total"]) == STAT_KEYS | {"layers"} and scheme["total"]["layers"] == 14
        assert len(scheme["worst_layers"]) == 3
        assert all(set(w) == STAT_KEYS | {"layer"} for w in scheme["worst_layers"])
        cosines = [w["cosine"] for w in scheme["worst_layers"]]
        assert cosines == sorted(cosines)
        assert min(s["cosine"] for s in scheme["layers"].values()) == cosines[0]
        assert all(set(s) == STAT_KEYS for s in scheme["layers"].values())
        assert 0.0 < scheme["total"]["changed"] < 1.0
    markdown = (tmp_path / "survival.md").read_text()
    assert "| nf4 |" in markdown and "| int8 |" in markdown and "lowest cosine" in markdown


def test_nf4_copy_is_what_the_statistics_quantize(adapter, tmp_path):
    # bitsandbytes serialises 4-bit weights on CPU as well (0.50), so the copy is written here too. Its codes
    # and scales are compared with ours, and decoded as a GPU deployment decodes them: this CPU's own
    # dequantize_4bit kernel depends on the machine (see the next test).
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    path, _ = adapter
    report = export(path, str(tmp_path), quantize="nf4", schemes=["fp4"], progress=False, overwrite=True)
    assert report.schemes == ["fp4", "nf4"], "the saved format is always reported"
    assert report.quantized_dir == str(tmp_path / "nf4")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    quantized = AutoModelForCausalLM.from_pretrained(report.quantized_dir)
    linears = [(n, m) for n, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 14, "every projection quantized, the output head kept"
    for name, module in linears:
        weight, state = module.weight, module.weight.quant_state
        merged_weight = merged.get_submodule(name).weight
        packed, absmax = quantize(merged_weight, "nf4").to_bitsandbytes()
        assert torch.equal(weight.data.view(torch.uint8).reshape(packed.shape), packed), name
        assert torch.equal(state.absmax, absmax), name
        deployed = dequantize_4bit_as_cuda(weight.data, state.absmax, "nf4", state.blocksize, state.shape)
        torch.testing.assert_close(deployed, fake_quantize(merged_weight, "nf4"), rtol=0, atol=0, msg=name)
    assert (Path(report.quantized_dir) / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "survival.json").read_text())["quantized_dir"] == report.quantized_dir


def test_nf4_copy_names_the_layers_an_avx512_cpu_decodes_wrong(adapter, tmp_path):
    """The tiny model's rows (32 and 64 columns) are not whole blocks of 64 in every layer: the report
    lists those, and on this machine bitsandbytes' CPU decoding of them is what bnb_decode predicts."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export(adapter[0], str(tmp_path), quantize="nf4", schemes=[], progress=False, overwrite=True)
    quantized = AutoModelForCausalLM.from_pretrained(report.quantized_dir)
    linears = {n: m for n, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    expected = [n for n, m in linears.items() if m.in_features % 64]
    assert expected and report.avx512_misdecoded == expected
    assert json.loads((tmp_path / "survival.json").read_text())["avx512_misdecoded"] == expected
    assert "AVX-512" in (tmp_path / "survival.md").read_text()
    assert any("AVX-512" in str(w.message) for w in caught) == cpu_has_avx512()
    for name, module in linears.items():
        weight, state = module.weight, module.weight.quant_state
        real = bnb.functional.dequantize_4bit(weight.data, state)
        cpu = dequantize_4bit_as_cpu(weight.data, state.absmax, "nf4", state.blocksize, state.shape)
        deployed = dequantize_4bit_as_cuda(weight.data, state.absmax, "nf4", state.blocksize, state.shape)
        assert torch.equal(real, cpu), name
        assert torch.equal(real, deployed) == (name not in expected or not cpu_has_avx512()), name


def test_failed_bitsandbytes_save_keeps_the_merged_export(adapter, tmp_path, monkeypatch):
    import lit_unlearn.export.saving as saving

    def refuse(quantize, dtype):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(saving, "bitsandbytes_config", refuse)
    with pytest.raises(RuntimeError, match=r"fp4.*no kernel.*CUDA.*complete.*quantize it at load time"):
        export(adapter[0], str(tmp_path), quantize="fp4", progress=False, overwrite=True)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "survival.json").read_text())["quantized_dir"] is None


def test_full_model_is_compared_with_its_base_layer_by_layer(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("q_proj"):
                module.weight.add_(1e-3 * torch.randn_like(module.weight))
    unlearned = tmp_path / "unlearned"
    model.save_pretrained(unlearned)

    with pytest.raises(ValueError, match="--base"):
        export(str(unlearned), str(tmp_path / "out"), progress=False)
    out = str(tmp_path / "out")
    report = export(str(unlearned), out, base=tiny_model_dir, schemes=["nf4"], progress=False)
    assert report.kind == "full"
    layers = report.layers["nf4"]
    assert len(layers) == 14, "every linear layer a deployment quantizes; the output head is not one"
    moved = {name for name, stats in layers.items() if stats.delta_sq > 0}
    assert moved == {f"model.layers.{i}.self_attn.q_proj" for i in range(2)}
    assert [name for name, _ in report.worst_layers("nf4")] == sorted(moved, key=lambda n: layers[n].cosine)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for (name, a), (_, b) in zip(model.named_parameters(), exported.named_parameters()):
        assert torch.equal(a, b), name


def test_missing_adapter_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no/such/adapter.*<log_dir>/adapter"):
        export("no/such/adapter", str(tmp_path / "out"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantize": "int4"}, r"`quantize`='int4'.*'nf4', 'fp4', 'int8'"),
        ({"schemes": ["nf5"]}, r"nf5.*nf4"),
        ({"dtype": "fp8"}, r"`dtype`='fp8'.*'bfloat16'"),
        ({"worst": 0}, r"`worst`"),
    ],
)
def test_bad_arguments_are_rejected_before_loading(adapter, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export(adapter[0], str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_adapter_without_base_and_missing_base(adapter, tmp_path):
    source = tmp_path / "adapter"
    source.mkdir()
    config = json.loads((Path(adapter[0]) / "adapter_config.json").read_text())
    (source / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="--base"):
        export(str(source), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="/no/such/base"):
        export(str(source), str(tmp_path / "out"), base="/no/such/base")


def test_a_group_that_does_not_divide_a_layer_takes_the_largest_divisor_below_it(tiny_model_dir, adapter, tmp_path):
    # Groups of 24 do not divide the tiny model's rows of 32: each layer is measured at group 16 instead.
    from transformers import AutoModelForCausalLM

    from lit_unlearn.quantization import get_scheme

    report = export(adapter[0], str(tmp_path / "out"), schemes=[get_scheme("int4", block_size=24)], progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    name = "model.layers.0.self_attn.q_proj"
    w0, w1 = base.get_submodule(name).weight, merged.get_submodule(name).weight
    assert report.layers["int4"][name] == survival_stats(w0, w1, "int4", block_size=16)
    assert report.layers["int4"][name] != survival_stats(w0, w1, "int4", block_size=-1)


def test_non_empty_output_dir_needs_overwrite(adapter, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(adapter[0], str(tmp_path))


def test_command_line(adapter, tmp_path, capsys):
    from lit_unlearn.cli import main as lit_unlearn

    out = str(tmp_path / "out")
    lit_unlearn(["export", adapter[0], out, "--schemes", "nf4", "--worst", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert "| nf4 |" in printed and "Merged model:" in printed
    assert (tmp_path / "out" / "survival.md").read_text() in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["no/such/adapter", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    assert "no/such/adapter" in capsys.readouterr().err


def test_dora_adapter_is_refused_before_any_model_loads(tmp_path):
    adapter = tmp_path / "dora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "use_dora": True, "base_model_name_or_path": "/does/not/exist"}))
    with pytest.raises(ValueError, match=r"DoRA adapter.*not W0 \+ ΔW"):
        export(str(adapter), str(tmp_path / "out"), progress=False)


def test_full_is_the_unquantized_name_here_too(adapter, tmp_path):
    report = export(adapter[0], str(tmp_path), quantize="full", schemes=["nf4"], progress=False, overwrite=True)
    assert report.quantized_dir is None and report.quantize == "none"


def test_bf16_copy_is_a_reported_scheme(adapter, tmp_path):
    report = export(adapter[0], str(tmp_path), schemes=["bf16", "nf4"], progress=False, overwrite=True)
    assert report.schemes == ["bf16", "nf4"]
    assert 0.0 < report.total("bf16").changed <= 1.0 and "| bf16 |" in (tmp_path / "survival.md").read_text()


def test_schemes_take_deployments_with_their_own_block_size(adapter, tmp_path):
    from lit_unlearn.deployment import Deployment

    report = export(adapter[0], str(tmp_path / "a"), schemes=[Deployment("int4", 16), "nf4"], progress=False)
    assert report.schemes == ["int4", "nf4"]
    default = export(adapter[0], str(tmp_path / "b"), schemes=["int4"], progress=False)
    assert report.total("int4").as_dict() != default.total("int4").as_dict(), "block 16 is not block 128"
    with pytest.raises(ValueError, match="`modules`: export reports every layer"):
        export(adapter[0], str(tmp_path / "c"), schemes=[Deployment("nf4", modules=["q_proj"])], progress=False)
    with pytest.raises(ValueError, match="twice"):
        export(adapter[0], str(tmp_path / "d"), schemes=[Deployment("int4", 16), "int4"], progress=False)
