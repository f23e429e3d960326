"""PreserveQuantization: the full-precision model trains, its quantized copy stays bit-identical, and
QuantizationSurvival, watching the same run, calls it: no code changed, no forgetting survives."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from tests.callbacks.test_quantization_survival import Unlearner, forget_retain_batches, make_trainer
from tests.quantization.test_bitsandbytes_cuda_rule import kernel_codes
from torch import nn

from lit_unlearn.callbacks import PreserveQuantization, QuantizationSurvival
from lit_unlearn.deployment import quantize_model_
from lit_unlearn.quantization import GGUF_MIXTURES, SCHEMES, quantize


def _linears(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"}


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s not in GGUF_MIXTURES])
def test_codes_and_scales_never_change_while_the_weights_move(tmp_path, scheme):
    seed_everything(0)
    module = Unlearner(optimizer="adam", lr=5e-3)
    before = _linears(module.model)
    preserve = PreserveQuantization(scheme, freeze_others=True)
    trainer = make_trainer(tmp_path, 6, [preserve], logger=False)
    trainer.fit(module, forget_retain_batches(6))
    assert preserve.projections == 6
    after = _linears(module.model)
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0.5 * sum(w.numel() for w in before.values()), "the full-precision weights moved"
    if scheme in ("nf4", "fp4"):
        _assert_bitsandbytes_codes_and_absmax_kept(before, after, scheme)
        return
    # The other formats' quantizers are checked against their references in tests/quantization.
    for name, w0 in before.items():
        q0, q1 = quantize(w0, scheme), quantize(after[name], scheme)
        assert torch.equal(q1.codes, q0.codes), name
        assert torch.equal(q1.scales.view(-1).view(torch.uint8), q0.scales.view(-1).view(torch.uint8)), name
        if q0.zero_points is not None:
            assert torch.equal(q1.zero_points, q0.zero_points), name


def _assert_bitsandbytes_codes_and_absmax_kept(before, after, quant_type: str) -> None:
    """Independent oracles, not lit-unlearn's quantizer: nf4 codes and absmax from bitsandbytes'
    ``quantize_4bit`` on the CPU; fp4 codes from the per-element transcription of the CUDA kernel's
    ``dQuantizeFP4`` (bitsandbytes' CPU fp4 rule differs near its pivots, docs/bitsandbytes-cpu.md) and
    absmax as each block's largest magnitude."""
    import bitsandbytes.functional as bnbf

    for name, w0 in before.items():
        w1 = after[name]
        assert w0.numel() % 64 == 0, f"{name}: the oracles are compared on whole 64-blocks"
        if quant_type == "nf4":
            (packed0, state0), (packed1, state1) = (
                bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4") for w in (w0.contiguous(), w1.contiguous())
            )
            assert torch.equal(packed1, packed0), name
            absmax0, absmax1 = state0.absmax, state1.absmax
        else:
            codes0, codes1 = kernel_codes(w0, "fp4"), kernel_codes(w1, "fp4")
            assert np.array_equal(codes1, codes0), f"{name}: {(codes1 != codes0).sum()} fp4 codes changed"
            absmax0, absmax1 = (w.reshape(-1, 64).abs().amax(1) for w in (w0, w1))
        assert torch.equal(absmax1.view(torch.int32), absmax0.view(torch.int32)), name


def test_fake_quantized_logits_equal_the_fake_quantized_originals(tmp_path):
    seed_everything(0)
    module = Unlearner(optimizer="adam", lr=5e-3)
    target = copy.deepcopy(module.model)
    trainer = make_trainer(tmp_path, 6, [PreserveQuantization("nf4", freeze_others=True)], logger=False)
    trainer.fit(module, forget_retain_batches(6))
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full_changed = not torch.equal(module.model(input_ids=ids).logits, target(input_ids=ids).logits)
        quantize_model_(module.model, "nf4")
        quantize_model_(target, "nf4")
        torch.testing.assert_close(module.model(input_ids=ids).logits, target(input_ids=ids).logits, rtol=0, atol=0)
    assert full_changed, "the full-precision model computes something else"


def test_survival_check_calls_the_reversion(tmp_path):
    """Listed *before* PreserveQuantization, the survival check still sees projected weights (the projection
    runs as the optimizer's post-step hook): nf4 codes changed exactly 0, the effect does not survive."""
    seed_everything(0)
    module = Unlearner(optimizer="adam", lr=1e-2)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4", "fp4"), warn_below=0.5)
    trainer = make_trainer(tmp_path, 8, [survival, PreserveQuantization("nf4", freeze_others=True)], logger=False)
    with pytest.warns(UserWarning, match=r"only -?\d+% of the forgetting survives nf4"):
        trainer.fit(module, forget_retain_batches(8, repeat=True))
    nf4 = [r for r in survival.history if r["scheme"] == "nf4"]
    assert nf4 and all(r["changed"] == 0.0 for r in nf4)
    rows = [r for r in survival.functional_history if r["scheme"] == "nf4"]
    assert all(r["forget_q"] == r["forget_q_original"] for r in rows), "the nf4 model is the original"
    assert any(abs(r["forget_fp"] - r["forget_fp_original"]) > 0.05 for r in rows), "full precision moved"
    measured = [r["effect_retained"] for r in rows if r["effect_retained"] is not None]
    assert measured and all(e == 0.0 for e in measured)
    assert float(trainer.callback_metrics["survival/nf4/changed"]) == 0.0
    assert float(trainer.callback_metrics["survival/fp4/changed"]) > 0.0, "fp4's grid is another"


def test_trainable_parameters_outside_the_cells_are_refused_or_frozen(tmp_path):
    module = Unlearner()
    trainer = make_trainer(tmp_path, 1, [PreserveQuantization("nf4")], logger=False)
    with pytest.raises(ValueError, match=r"other trainable parameters \(model.model.embed_tokens.weight.*freeze_others=True"):
        trainer.fit(module, forget_retain_batches(1))
    module = Unlearner()
    trainer = make_trainer(tmp_path, 1, [PreserveQuantization("nf4", freeze_others=True)], logger=False)
    trainer.fit(module, forget_retain_batches(1))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("proj.weight") for n in trainable)


def test_lora_and_bad_arguments_are_refused(tmp_path):
    module = Unlearner(lora=True)
    trainer = make_trainer(tmp_path, 1, [PreserveQuantization("nf4")], logger=False)
    with pytest.raises(ValueError, match=r"LoRA update scaling·B·A cannot follow.*`lora: null`"):
        trainer.fit(module, forget_retain_batches(1))
    with pytest.raises(ValueError, match=r"'nf5'.*'nf4'"):
        PreserveQuantization("nf5")
    with pytest.raises(ValueError, match="block_size"):
        PreserveQuantization("nf4", block_size=48)


def test_resume_projects_into_the_original_cells(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(stop, ckpt_path=None):
        seed_everything(0)
        module = Unlearner(optimizer="sgd", lr=0.5)
        if ckpt_path is None:
            run.w0 = _linears(module.model)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
        preserve = PreserveQuantization("int4", freeze_others=True)
        trainer = make_trainer(tmp_path, stop, [preserve, checkpoint], enable_checkpointing=True, logger=False)
        trainer.fit(module, forget_retain_batches(4, repeat=True), ckpt_path=ckpt_path)
        return module, preserve

    run(2)
    module, preserve = run(4, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert preserve.projections == 2
    for name, w in _linears(module.model).items():
        assert torch.equal(quantize(w, "int4").codes, quantize(run.w0[name], "int4").codes), name


def test_survival_curves_are_written_with_the_table(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lit_unlearn.callbacks.quantization_survival import CURVES_NAME

    seed_everything(0)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival, PreserveQuantization("nf4", freeze_others=True)],
                           logger=CSVLogger(tmp_path, name="logs"))
    trainer.fit(Unlearner(optimizer="adam", lr=1e-2), forget_retain_batches(4, repeat=True))
    rows = survival.curve_rows()
    # One step axis: the updates applied, in the curves, the per-layer table and metrics.csv alike.
    assert [r["step"] for r in rows] == [2, 4] == sorted({r["step"] for r in survival.history})
    import csv

    logged = [row for row in csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")) if row.get("survival/nf4/changed")]
    assert [int(row["step"]) for row in logged] == [2, 4]
    assert all(r["survival/nf4/changed"] == 0.0 for r in rows)
    assert (Path(trainer.log_dir) / CURVES_NAME).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("scheme", ["nf4", "int4"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_verdict_equals_an_independent_computation(tmp_path, scheme, lora):
    """effect_retained and retain_shift recomputed another way: deepcopies of the original and trained
    models, peft's merge_and_unload, quantize_model_, and the probe loss (model(**batch).loss) on the
    first training batch; weight statistics against survival_stats on the merged weights."""
    from lit_unlearn.quantization import survival_stats

    seed_everything(0)
    module = Unlearner(lora=lora, optimizer="adam", lr=1e-2)
    original = copy.deepcopy(module.model)
    survival = QuantizationSurvival(every_n_steps=3, schemes=(scheme,), warn_below=float("-inf"))
    data = forget_retain_batches(3)
    trainer = make_trainer(tmp_path, 3, [survival], logger=False)
    trainer.fit(module, data)
    probe = next(iter(data))

    def deployed(model, quantized):
        model = copy.deepcopy(model).eval()
        model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        if quantized:
            quantize_model_(model, scheme)
        return model

    def loss(model, split):
        with torch.no_grad():
            return float(model(**probe[split]).loss)

    cur_fp, cur_q = deployed(module.model, False), deployed(module.model, True)
    orig_fp, orig_q = deployed(original, False), deployed(original, True)
    (row,) = [r for r in survival.functional_history if r["step"] == 3]
    expected = (loss(cur_q, "forget") - loss(orig_q, "forget")) / (loss(cur_fp, "forget") - loss(orig_fp, "forget"))
    assert row["effect_retained"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert row["retain_shift"] == pytest.approx(loss(cur_q, "retain") - loss(cur_fp, "retain"), abs=1e-5)
    assert row["forget_q_original"] == pytest.approx(loss(orig_q, "forget"), abs=1e-6)

    rows = {r["layer"]: r for r in survival.history if r["step"] == 3}
    for name, merged in ((n, m) for n, m in cur_fp.named_modules() if type(m) is nn.Linear and n in rows):
        w0 = original.get_submodule(name).weight if not lora else orig_fp.get_submodule(name).weight
        direct = survival_stats(w0, merged.weight, scheme)
        assert rows[name]["changed"] == direct.changed, name
        assert rows[name]["cosine"] == pytest.approx(direct.cosine, rel=1e-4, abs=1e-6), name
        assert rows[name]["retained"] == pytest.approx(direct.retained, rel=1e-4, abs=1e-6), name


def test_survival_reports_when_an_update_dies_in_the_bf16_copy(tmp_path):
    """A learning rate far below bf16's resolution: the fp32 weights move, the bf16 copy does not."""
    seed_everything(0)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("bf16", "fp16"), functional=False)
    trainer = make_trainer(tmp_path, 2, [survival], logger=False)
    trainer.fit(Unlearner(optimizer="sgd", lr=1e-7), forget_retain_batches(2, repeat=True))
    bf16 = [r for r in survival.history if r["scheme"] == "bf16" and r["delta_norm"] > 0]
    assert bf16 and all(r["changed"] < 0.01 and r["below_half_step"] > 0.99 for r in bf16)
    assert float(trainer.callback_metrics["survival/bf16/changed"]) < 0.01
    assert float(trainer.callback_metrics["survival/fp16/changed"]) > float(trainer.callback_metrics["survival/bf16/changed"])


def test_fit_ends_with_where_the_outputs_are_and_the_last_verdict(tmp_path, caplog):
    import logging

    from lightning.pytorch.loggers import CSVLogger

    seed_everything(0)
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4", "fp4"), warn_below=float("-inf"))
    trainer = make_trainer(tmp_path, 4, [survival, PreserveQuantization("nf4", freeze_others=True)],
                           logger=CSVLogger(tmp_path, name="logs"))
    with caplog.at_level(logging.INFO):
        trainer.fit(Unlearner(optimizer="adam", lr=1e-2), forget_retain_batches(4, repeat=True))
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("QuantizationSurvival: table")]
    assert "quantization_survival.csv" in summary and "survival_curves.png" in summary
    assert "optimizer step 4" in summary and "nf4 effect_retained 0.00, 0% of codes changed" in summary


# ---------------------------------------------------------------- the deployment's arithmetic
def _kernel_codes(w: torch.Tensor, quant_type: str, ulps: int = 0) -> torch.Tensor:
    """bitsandbytes' CUDA codes (dQuantizeNF4 / dQuantizeFP4 as transcribed in
    tests/quantization/test_bitsandbytes_cuda_rule.py, vectorised) with ``1 / absmax`` moved by ``ulps``."""
    from tests.quantization.test_bitsandbytes_cuda_rule import FP4_PIVOTS, NF4_PIVOTS

    blocks = w.detach().float().reshape(-1, 64)
    reciprocal = 1.0 / blocks.abs().amax(dim=1, keepdim=True)
    for _ in range(abs(ulps)):
        reciprocal = torch.nextafter(reciprocal, torch.tensor(float("inf") if ulps > 0 else 0.0))
    x = (blocks * reciprocal).reshape(-1)
    x = torch.where(x.abs() < 2.0**-126, x * 0.0, x)  # fast math flushes subnormals, keeping the sign
    if quant_type == "nf4":
        return (x[:, None] > torch.tensor([float(p) for p in NF4_PIVOTS])).sum(dim=1)
    magnitude = (x.abs()[:, None] > torch.tensor([float(p) for p in FP4_PIVOTS])).sum(dim=1)
    pattern = torch.tensor([0, 1, 6, 7, 4, 5, 2, 3])[magnitude]
    return pattern + 8 * (x < 0)


def _parked(tmp_path, scheme: str, margin: float | None):
    seed_everything(0)
    module = Unlearner(optimizer="sgd", lr=2.0)  # large steps: most weights end on their cell's edge
    before = _linears(module.model)
    extra = {} if margin is None else {"margin": margin}
    preserve = PreserveQuantization(scheme, freeze_others=True, **extra)
    trainer = make_trainer(tmp_path, 4, [preserve], logger=False)
    trainer.fit(module, forget_retain_batches(4, repeat=True))
    return before, _linears(module.model), preserve


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
def test_parked_codes_survive_the_deployments_arithmetic(tmp_path, scheme):
    """Quantized as a GPU may quantize them (``1 / absmax`` an ulp either way) or from a bf16 copy of the
    checkpoint, the trained weights still have the codes the original has under the same arithmetic."""
    before, after, preserve = _parked(tmp_path, scheme, None)
    total = sum(w.numel() for w in before.values())
    assert preserve.held < 0.25 * total, "most weights keep room to move"
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0.5 * total
    for name, w0 in before.items():
        w1 = after[name]
        for ulps in (-1, 0, 1):
            assert torch.equal(_kernel_codes(w1, scheme, ulps), _kernel_codes(w0, scheme, ulps)), (name, ulps)
        q1, q0 = quantize(w1.bfloat16(), scheme), quantize(w0.bfloat16(), scheme)
        assert torch.equal(q1.codes, q0.codes), f"{name}: the bf16 copy changed codes"
        assert torch.equal(quantize(w1, scheme).codes, quantize(w0, scheme).codes), name


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
def test_exact_edges_do_not_survive_the_deployments_arithmetic(tmp_path, scheme):
    """``margin=0.0`` (the edges themselves) keeps the codes only under this machine's arithmetic."""
    before, after, _ = _parked(tmp_path, scheme, 0.0)
    total = sum(w.numel() for w in before.values())
    same = all(torch.equal(quantize(after[n], scheme).codes, quantize(w0, scheme).codes) for n, w0 in before.items())
    assert same, "exact on this machine"
    flipped_ulp = sum(int((_kernel_codes(after[n], scheme, 1) != _kernel_codes(w0, scheme, 1)).sum())
                      for n, w0 in before.items())
    flipped_bf16 = sum(int((quantize(after[n].bfloat16(), scheme).codes != quantize(w0.bfloat16(), scheme).codes).sum())
                       for n, w0 in before.items())
    assert flipped_ulp > 0.05 * total and flipped_bf16 > 0.05 * total, (flipped_ulp / total, flipped_bf16 / total)


def test_margin_is_checked_and_casts_take_none():
    with pytest.raises(ValueError, match=r"`margin`.*\[0, 0.5\).*-0.1"):
        PreserveQuantization("nf4", margin=-0.1)
    assert PreserveQuantization("bf16").margin == 0.0
    assert PreserveQuantization("nf4").margin == 2.0**-7


@pytest.mark.parametrize("scheme", GGUF_MIXTURES)
def test_gguf_mixtures_are_refused_at_construction(scheme):
    # A mixture stores some layers as K-quants, whose scales come from a least-squares search over the whole
    # sub-block: no weight has a cell of its own. Refused before any fit, naming the legacy types to use.
    with pytest.raises(ValueError, match=rf"'{scheme}' has no quantization cells.*'q4_1'"):
        PreserveQuantization(scheme)
