"""One deployed weight: the functional check's, evaluation's, export's and peft's merge + quantize_model_
are the same tensors, bit for bit, for LoRA (fp32 and bf16 bases) and full-parameter models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.conftest import build_tiny_llama
from torch import nn

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.survival.layers import prepare_references, select_linear_layers
from lit_unlearn.deployment import (
    Deployment,
    deployed_layers,
    deployed_model,
    deployed_weights,
    merge,
    merged_state_dict,
    output_head,
    quantize_model_,
)
from lit_unlearn.quantization import get_scheme, quantize
from lit_unlearn.quantization.llm_int8 import llm_int8_linear

SCHEMES = ["nf4", "int4", "int8"]
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2]])


def _lora_model(dtype: torch.dtype):
    model = build_tiny_llama(360).to(dtype)
    model = apply_lora(model, LoRA(r=4, alpha=8.0, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = (torch.randn(param.shape, generator=generator) * 0.05).to(param.dtype)
    return model.eval()


def _full_model():
    model = build_tiny_llama(360)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    return model.eval()


def _weights_seen(model: nn.Module, context) -> dict[str, torch.Tensor]:
    """The weight every linear layer computes with during one forward inside ``context``."""
    seen: dict[str, torch.Tensor] = {}
    names = {id(m): n.removeprefix("base_model.model.").removesuffix(".base_layer")
             for n, m in model.named_modules()}
    with context:
        handles = [m.register_forward_pre_hook(lambda m, a: seen.__setitem__(names[id(m)], m.weight.detach().clone()))
                   for m in model.modules() if type(m) is nn.Linear and "lora_" not in names[id(m)]]
        try:
            model(input_ids=IDS)
        finally:
            for h in handles:
                h.remove()
    return seen


def _reference(model: nn.Module, scheme: str | None) -> dict[str, torch.Tensor]:
    """peft's merge_and_unload on a copy, then quantize_model_: what a deployment holds."""
    merged = copy.deepcopy(model)
    merged = merged.merge_and_unload() if hasattr(merged, "merge_and_unload") else merged
    if scheme is not None:
        quantize_model_(merged, scheme)
    head = output_head(merged)
    return {n: m.weight.detach() for n, m in merged.named_modules() if type(m) is nn.Linear and m is not head}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["lora-fp32", "lora-bf16", "full"])
def test_every_path_deploys_the_same_weights(kind, scheme):
    model = _full_model() if kind == "full" else _lora_model(torch.bfloat16 if kind == "lora-bf16" else torch.float32)
    want = _reference(model, scheme)
    s = get_scheme(scheme)

    # Evaluation's path (every layer swapped at once).
    evaluation = _weights_seen(model, deployed_weights(model, scheme))
    # The functional survival check's path (one layer at a time, as the callback selects and caches).
    layers = select_linear_layers(model, None) if kind != "full" else deployed_layers(model)
    prepare_references(layers, [s], {})
    check = _weights_seen(model, deployed_model(model, layers, s, lazy=True))
    # The merged state dict export and load_bitsandbytes start from, quantized.
    plain = copy.deepcopy(model) if kind == "full" else build_tiny_llama(360).to(model.dtype)
    plain.load_state_dict(merged_state_dict(model))
    quantize_model_(plain, Deployment(scheme))
    exported = {n: m.weight.detach() for n, m in plain.named_modules() if n in want}

    head = "lm_head"
    # LLM.int8 computes from the codes (activations quantized too): its layers swap in no weight, and
    # what they compute is checked below; the stored (exported) int8 weights are checked here.
    paths = (("evaluation", evaluation), ("survival check", check)) if scheme != "int8" else ()
    for name, weight in want.items():
        for path, got in (*paths, ("merged state dict", exported)):
            assert got[name].dtype == weight.dtype, (path, name)
            assert torch.equal(got[name].view(-1).view(torch.uint8), weight.view(-1).view(torch.uint8)), (path, name)
    assert head not in want and torch.equal(evaluation[head], model.get_output_embeddings().weight)
    if scheme == "int8":
        import bitsandbytes.functional as F

        merged = _reference(model, None)  # peft's merge, unquantized
        # Independent oracle: bitsandbytes' own LLM.int8 weight quantization, as Int8Params applies it when
        # a `load_in_8bit` layer is loaded (fp16 weight, one absmax per output row, round(w · 127 / absmax)).
        bnb = {name: F.int8_vectorwise_quant(w.to(torch.float16))[:2] for name, w in merged.items()}
        for name, (codes, scb) in bnb.items():
            q = quantize(merged[name], "int8")
            assert torch.equal(q.codes, codes) and torch.equal(q.scales, scb), name
            # The stored weight is bitsandbytes' dequantization of its own codes.
            dequantized = F.int8_vectorwise_dequant(codes, scb).to(want[name].dtype)
            assert torch.equal(want[name].view(-1).view(torch.uint8), dequantized.view(-1).view(torch.uint8)), name
        for path, context in (("evaluation", lambda: deployed_weights(model, scheme)),
                              ("survival check", lambda: deployed_model(model, layers, s, lazy=True))):
            for name, (x, y) in _calls_seen(model, context()).items():
                codes, scb = bnb[name]
                assert torch.equal(y, llm_int8_linear(x, codes, scb, None)), (path, name)


def _calls_seen(model: nn.Module, context) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input and output of every selected linear layer (not the head) during one forward in ``context``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names = {id(m): n.removeprefix("base_model.model.").removesuffix(".base_layer")
             for n, m in model.named_modules()}
    head = model.get_output_embeddings()
    with context:
        handles = [m.register_forward_hook(lambda m, a, out: seen.__setitem__(names[id(m)], (a[0], out)))
                   for m in model.modules()
                   if type(m) is nn.Linear and "lora_" not in names[id(m)] and m is not getattr(head, "base_layer", head)]
        try:
            model(input_ids=IDS)
        finally:
            for h in handles:
                h.remove()
    assert seen
    return seen


def test_original_weights_are_quantized_base_and_adapters_off():
    model = _lora_model(torch.float32)
    s = get_scheme("nf4")
    layers = select_linear_layers(model, None)
    prepare_references(layers, [s], {})
    original = _weights_seen(model, deployed_model(model, layers, s, original=True, lazy=True))
    unmerged = copy.deepcopy(model)
    for _, layer in [(n, m) for n, m in unmerged.named_modules() if hasattr(m, "lora_B")]:
        for b in layer.lora_B.values():
            b.weight.data.zero_()
    want = _reference(unmerged, "nf4")
    for name, weight in want.items():
        assert torch.equal(original[name], weight), name


def test_bf16_merge_is_peft_merge_and_rounds_sub_ulp_updates_away():
    w0 = torch.full((4, 64), 1.0, dtype=torch.bfloat16)
    tiny = torch.full((4, 64), 2.0**-10)  # a quarter of bf16's ulp at 1.0
    assert torch.equal(merge(w0, tiny), w0), "a sub-ulp update vanishes in the bf16 merge"
    model = _lora_model(torch.bfloat16)
    merged = copy.deepcopy(model).merge_and_unload()
    for layer in deployed_layers(model):
        if layer.lora is not None:
            assert layer.merged().dtype == torch.bfloat16
            assert torch.equal(layer.merged(), merged.get_submodule(layer.name).weight), layer.name


def test_dora_adapters_are_refused_with_the_fix():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(360), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match=r"q_proj.*DoRA.*not W0 \+ ΔW.*use_dora=False"):
        deployed_layers(model)
    with pytest.raises(ValueError, match="DoRA"), deployed_weights(model, "nf4"):
        pass


def test_output_head_is_found_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(360), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    head = output_head(model)
    assert type(head) is nn.Linear and head is model.get_output_embeddings().base_layer
    layers = {layer.name: layer for layer in deployed_layers(model)}
    assert not layers["lm_head"].quantized, "an adapted head is merged, never quantized"
    assert all(layer.quantized for name, layer in layers.items() if name != "lm_head")


class _TwoHeads(nn.Module):
    """A model whose output head is not named like one, beside a layer that is named like one."""

    def __init__(self) -> None:
        super().__init__()
        self.up_proj, self.proj_out, self.lm_head = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)

    def get_output_embeddings(self) -> nn.Module:
        return self.proj_out


def test_one_output_head_rule_for_lora_targets_and_deployments():
    # The head by identity and a layer named like a head are kept in full precision by every selector:
    # LoRA's default targets, the deployed layers and quantize_model_ (transformers skips both).
    from lit_unlearn.adapters import is_output_head, linear_module_names

    model = _TwoHeads()
    head = output_head(model)
    assert [n for n, m in model.named_children() if is_output_head(n, m, head)] == ["proj_out", "lm_head"]
    assert linear_module_names(model) == ["up_proj"]
    assert {layer.name: layer.quantized for layer in deployed_layers(model)} == {"up_proj": True}
    deployed = copy.deepcopy(model)
    quantize_model_(deployed, "int4")
    assert not torch.equal(deployed.up_proj.weight, model.up_proj.weight)
    assert torch.equal(deployed.proj_out.weight, model.proj_out.weight)
    assert torch.equal(deployed.lm_head.weight, model.lm_head.weight)


def test_deployment_names_its_parts_and_refuses_bad_ones():
    d = Deployment("int4", 64, ["q_proj"])
    assert d.scheme == get_scheme("int4", 64)
    assert [layer.name for layer in d.layers(build_tiny_llama(360))][:2] == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert Deployment("full").scheme is None
    with pytest.raises(ValueError, match=r"'nf5'.*'full', 'int8', 'nf4'"):
        Deployment("nf5")
    with pytest.raises(ValueError, match="block_size"):
        Deployment("full", 64)
    with pytest.raises(ValueError, match="either a `Deployment` or"), deployed_weights(build_tiny_llama(360), d, 64):
        pass


def test_unknown_scheme_family_raises_instead_of_rounding_to_nearest(monkeypatch):
    from lit_unlearn.quantization import schemes

    with pytest.raises(ValueError, match=r"Unknown quantization scheme 'mx4'"):
        schemes._family("mx4")
    scheme = get_scheme("int4")
    monkeypatch.setattr(type(scheme), "family", property(lambda self: "mx"))
    from lit_unlearn.quantization.functional import codec_for

    with pytest.raises(ValueError, match="family 'mx'"):
        codec_for(scheme, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_writes_the_weights_its_report_describes(tmp_path, dtype):
    from tests.conftest import build_tokenizer, make_texts
    from transformers import AutoModelForCausalLM

    from lit_unlearn.export import export
    from lit_unlearn.quantization import survival_stats

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    build_tiny_llama(360).to(dtype).save_pretrained(base_dir)
    build_tokenizer(make_texts(50, seed=0)).save_pretrained(base_dir)
    model = _lora_model(dtype)
    model.save_pretrained(adapter_dir)
    config = adapter_dir / "adapter_config.json"
    config.write_text(config.read_text().replace('"base_model_name_or_path": null', f'"base_model_name_or_path": "{base_dir}"'))
    report = export(str(adapter_dir), str(tmp_path / "out"), base=str(base_dir), schemes=["nf4", "int4"],
                    progress=False)
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=dtype)
    # Independent oracle for nf4: peft's merge_and_unload, then bitsandbytes' quantize_4bit / dequantize_4bit
    # (block 64). Blocks run over the flattened weight, so a weight viewed as rows of 64 has the same blocks,
    # and rows that are whole blocks decode on this CPU as on CUDA (docs/bitsandbytes-cpu.md).
    import bitsandbytes.functional as F

    merged = copy.deepcopy(model).merge_and_unload()
    deployed = copy.deepcopy(written)
    quantize_model_(deployed, "nf4")
    oracle_layers = [n for n, m in merged.named_modules() if type(m) is nn.Linear and m is not output_head(merged)]
    assert len(oracle_layers) == 14
    for name in oracle_layers:
        w = merged.get_submodule(name).weight.detach()
        packed, state = F.quantize_4bit(w.reshape(-1, 64), blocksize=64, quant_type="nf4")
        expected = F.dequantize_4bit(packed, state).reshape(w.shape)
        got = deployed.get_submodule(name).weight
        assert got.dtype == expected.dtype == dtype
        assert torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), name
    # Independent oracle for int4, from the scheme's definition (PAPER.md: symmetric RTN, s = max|w| / 7 per
    # group of 128, Q(w) = s * clamp(round(w / s), -7, 7)) written in numpy on peft's merge. The tiny model's
    # rows (32 and 64 columns) are shorter than a group, so each row is one group.
    deployed = copy.deepcopy(written)
    quantize_model_(deployed, "int4")
    for name in oracle_layers:
        w = merged.get_submodule(name).weight.detach().float().numpy()
        assert w.shape[1] < 128
        s = np.abs(w).max(axis=1, keepdims=True) / np.float32(7)
        # Integer codes, as a deployment stores them: code 0 decodes to +0.0, never -0.0.
        codes = np.clip(np.round(w / np.where(s > 0, s, np.float32(1))), -7, 7).astype(np.int8)
        expected = torch.from_numpy(codes.astype(np.float32) * s).to(dtype)
        got = deployed.get_submodule(name).weight
        assert torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), name
    for scheme in ("nf4", "int4"):
        want = _reference(model, scheme)
        deployed = copy.deepcopy(written)
        quantize_model_(deployed, scheme)
        for name, weight in want.items():
            assert torch.equal(deployed.get_submodule(name).weight, weight), (scheme, name)
        # The report's statistics are those of the written weights against the base, exactly.
        for name, stats in report.layers[scheme].items():
            w0 = model.get_base_model().get_submodule(name).base_layer.weight
            direct = survival_stats(w0, written.get_submodule(name).weight, scheme)
            assert stats.n_changed == direct.n_changed and stats.n_below_half_step == direct.n_below_half_step
            assert stats.dot == pytest.approx(direct.dot, rel=1e-5, abs=1e-12), (scheme, name)


def test_callbacks_take_deployments_in_the_same_vocabulary(tmp_path, monkeypatch):
    from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation

    survival = QuantizationSurvival(schemes=["nf4", Deployment("int4", 64)], block_size=128)
    assert survival.schemes == (get_scheme("nf4", 128), get_scheme("int4", 64))
    evaluation = QuantizedEvaluation(precisions=["full", Deployment("int4", 64)], modules=["q_proj"])
    assert evaluation.precisions == ["full", "int4"]
    assert evaluation.settings.deployment("int4") == Deployment("int4", 64, ["q_proj"])
    with pytest.raises(ValueError, match="selects other layers than `modules`"):
        QuantizationSurvival(schemes=[Deployment("nf4", modules=["v_proj"])], modules=["q_proj"])
    with pytest.raises(ValueError, match="twice"):
        QuantizedEvaluation(precisions=["nf4", Deployment("nf4", 128)])

    # From YAML: a scheme with its own block size is a mapping.
    from lit_unlearn.cli import UnlearnCLI

    config = tmp_path / "c.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lit_unlearn.callbacks.QuantizationSurvival\n"
        "      init_args:\n        schemes: [nf4, {precision: int4, block_size: 64}]\n"
    )
    monkeypatch.chdir(tmp_path)
    cli = UnlearnCLI(args=["-c", str(config)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, QuantizationSurvival)]
    assert callback.schemes == (get_scheme("nf4"), get_scheme("int4", 64))


def test_full_precision_lora_model_runs_merged_in_the_base_dtype():
    model = _lora_model(torch.bfloat16)
    merged = copy.deepcopy(model).merge_and_unload()
    with torch.no_grad():
        want = merged(input_ids=IDS).logits
        unmerged = model(input_ids=IDS).logits
        with deployed_weights(model, "full") as deployed:
            got = deployed(input_ids=IDS).logits
        after = model(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(unmerged, want), "bf16: the unmerged adapter computes something else"
    assert torch.equal(after, unmerged)
    plain = build_tiny_llama(360)
    with deployed_weights(plain, "full") as deployed:
        assert deployed is plain
