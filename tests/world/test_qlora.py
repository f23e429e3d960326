"""QLoRA end to end on the test-size world: configs/qlora/npo_gdr.yaml unlearns over the target loaded in
nf4, both callbacks measure the merge re-quantized to nf4, and `lit-unlearn export` writes that very
model: the logits of the deployed model the checks measure are the exported copies'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.world.test_acting_on_survival import _callback, _run

from lit_unlearn.deployment import deployed_weights
from lit_unlearn.export import export
from lit_unlearn.quantization.bnb_decode import keep_4bit_layout


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def qlora_fit(test_world, world_cache, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        cli = _run(tmp_path_factory.mktemp("qlora"), monkeypatch, world_cache, "qlora/npo_gdr.yaml", max_steps=20)
        yield cli
    finally:
        monkeypatch.undo()


def test_qlora_fit_trains_an_adapter_over_the_4bit_base(qlora_fit):
    module = qlora_fit.model
    q_proj = module.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit"
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    assert module.reference is None, "NPO's reference is the 4-bit base with the adapter off, not a copy"
    adapter = Path(module.resolve_output_dir())
    record = json.loads((adapter / "base_quantization.json").read_text())
    assert record == {"load_in_4bit": True, "quant_type": "nf4", "compute_dtype": "float32", "double_quant": False}

    survival = _callback(qlora_fit, "QuantizationSurvival")
    last = {r["scheme"]: r for r in survival.functional_history if r["step"] == 20}
    assert set(last) == {"nf4", "fp4"}
    nf4 = last["nf4"]
    # The original nf4 deployment is the 4-bit base itself: its probe loss is the full-precision one.
    assert nf4["forget_q_original"] == nf4["forget_fp_original"]
    assert nf4["forget_fp"] > nf4["forget_fp_original"], "the adapter unlearned at full precision"
    rows = [r for r in survival.history if r["step"] == 20 and r["scheme"] == "nf4"]
    assert len(rows) == 14 and all(r["delta_norm"] > 0 for r in rows), "every adapted layer measured"

    table = _callback(qlora_fit, "QuantizedEvaluation").table
    assert {r["precision"] for r in table.rows if r["method"].startswith("npo_gdr")} == {"full", "int8", "nf4", "fp4"}


def test_export_writes_the_model_the_survival_check_measured(qlora_fit, tmp_path):
    module = qlora_fit.model
    report = export(str(module.resolve_output_dir()), str(tmp_path / "merged"), progress=False)
    assert report.base_quantization == "nf4" and report.quantize == "nf4"
    assert Path(report.quantized_dir) == tmp_path / "merged" / "nf4"
    assert report.total("nf4").numel > 0 and "decoded nf4 (QLoRA)" in report.to_markdown()

    from transformers import AutoModelForCausalLM

    nf4_copy = AutoModelForCausalLM.from_pretrained(report.quantized_dir).eval()
    keep_4bit_layout(nf4_copy)
    assert type(nf4_copy.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    merged = AutoModelForCausalLM.from_pretrained(report.output_dir, dtype=torch.float32).eval()
    texts = ["The capital of the old kingdom was", "She wrote her first letter in the winter of"]
    batch = dict(module.tokenizer(texts, return_tensors="pt", padding=True))
    model = module.model.eval()
    # The survival check's and the evaluation's deployed model (one function), against what export wrote.
    with deployed_weights(model, "nf4") as deployed:
        checked_nf4 = _logits(deployed, batch)
    with deployed_weights(model, "full") as deployed:
        checked_full = _logits(deployed, batch)
    torch.testing.assert_close(_logits(nf4_copy, batch), checked_nf4, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(merged, batch), checked_full, rtol=0, atol=1e-4)
    assert (checked_nf4 - checked_full).abs().max() > 1e-3, "re-quantizing changed the model"


def test_qlora_export_refuses_a_second_format(qlora_fit, tmp_path):
    adapter = str(qlora_fit.model.resolve_output_dir())
    with pytest.raises(ValueError, match=r"trained over a nf4 base \(QLoRA\).*`quantize`='fp4'"):
        export(adapter, str(tmp_path / "out"), quantize="fp4", progress=False)
    assert not (tmp_path / "out").exists(), "refused before anything was written"
