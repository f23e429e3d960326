"""Sharded training (FSDP2 under Lightning's ModelParallelStrategy, 2 CPU processes with gloo): the model
and the frozen reference are sharded per decoder block, the fit-end save gathers them into safetensors
that ``from_pretrained`` loads, and QuantizationSurvival logs what one process logs on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("fit_sharded.py")
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def wide_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama at hidden 40 and 80 intermediate features. Split over 2 ranks, a shard of q/k/v/o_proj
    is not a whole number of nf4 blocks of 64 (20 rows x 40 = 12.5 blocks), so those layers are gathered one
    at a time; gate/up/down_proj shards are (25 blocks), so each rank measures its own rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = build_tiny_llama(len(tokenizer))
    config = model.config.__class__(**{**model.config.to_dict(), "hidden_size": 40, "intermediate_size": 80,
                                                      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 10})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide")
    type(model)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _fit(tmp_path: Path, model: str, texts: dict, *, sharded: bool, lora: dict | None, objective: str,
         steps: int = 4, name: str | None = None, **extra) -> dict:
    name = name or ("sharded" if sharded else "single") + ("-lora" if lora else "-full")
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    spec = {
        "model": model, "objective": objective, "lora": lora, "lr": 5e-3, "forget": texts["forget"],
        "retain": texts["retain"], "batch_size": 2 if sharded else 4, "schemes": ["nf4", "int4", "int8"],
        "functional": True, "devices": 2 if sharded else 1, "sharded": sharded, "steps": steps, **extra,
        "root": str(root), "output_dir": str(root / "saved"), "result": str(root / "result.json"),
        "probe": str(root / "probe.pt"),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(root / "spec.json")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    # Both ranks write to one stderr: the rank that failed first is named in its error lines, which the other
    # rank's trace (the tail) would push out of the message.
    causes = [line for line in done.stderr.splitlines() if "Error" in line or "terminate" in line or "Abort" in line]
    assert done.returncode == 0, "\n".join(causes[-20:]) + "\n...\n" + done.stderr[-3000:]
    result = json.loads((root / "result.json").read_text())
    return {**result, "saved": root / "saved", "probe": torch.load(root / "probe.pt"), "log": done.stderr}


def _final_model(model_dir: str, saved: Path, lora: bool):
    from transformers import AutoModelForCausalLM

    if not lora:
        return AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(saved)).eval()


def _single_process_check(model_dir: str, final, lora: bool, schemes, probe):
    """What QuantizationSurvival measures on one process for these final weights: per-layer rows, and
    the probe's forget loss at full precision and deployed per scheme."""
    from transformers import AutoModelForCausalLM

    from lit_unlearn.deployment import deployed_layers, deployed_weights
    from lit_unlearn.objectives import mean_token_nll
    from lit_unlearn.quantization import get_scheme

    layers = deployed_layers(final)
    if not lora:
        original = dict(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters())
        for layer in layers:
            layer.source, layer.snapshot = "snapshot", original[f"{layer.name}.weight"].detach()
    rows = {}
    for layer in layers:
        for name, stats in layer.survival([get_scheme(s) for s in schemes]).items():
            rows[(name, layer.name)] = stats
    forget = probe[0]["forget"]

    def loss(model):
        with torch.no_grad():
            logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
            return float(mean_token_nll(logits, forget["labels"]))

    losses = {}
    for scheme in ["full", *schemes]:
        with deployed_weights(final, scheme) as deployed:
            losses[scheme] = loss(deployed)
    return rows, losses


@pytest.mark.parametrize(("lora", "objective"), [(None, "npo_klr"), ({"r": 4, "alpha": 8, "dropout": 0.0}, "npo_gdr")],
                         ids=["full-npo-klr", "lora-npo-gdr"])
def test_two_process_fsdp2_survival_equals_one_process_on_the_same_weights(
    wide_model_dir, text_files, tmp_path, lora, objective
):
    run = _fit(tmp_path, wide_model_dir, text_files, sharded=True, lora=lora, objective=objective)
    assert run["parameter_types"] == ["DTensor"], "every parameter sharded (FSDP2 keeps them as DTensors)"
    assert run["reference_parameter_types"] == (["DTensor"] if lora is None else None), "the reference too"
    final = _final_model(wide_model_dir, run["saved"], lora is not None)  # the gathered safetensors load
    schemes = ["nf4", "int4", "int8"]
    rows, losses = _single_process_check(wide_model_dir, final, lora is not None, schemes, run["probe"])
    last = [r for r in run["history"] if r["step"] == 4]
    assert {(r["scheme"], r["layer"]) for r in last} == set(rows)
    for r in last:
        expected = rows[(r["scheme"], r["layer"])]
        where = f"{r['scheme']} {r['layer']}"
        assert r["numel"] == expected.numel, where
        assert r["changed"] == expected.changed and r["below_half_step"] == expected.below_half_step, where
        assert r["retained"] == pytest.approx(expected.retained, rel=1e-5, abs=1e-7), where
        assert r["cosine"] == pytest.approx(expected.cosine, rel=1e-5, abs=1e-7), where
    assert any(r["changed"] > 0 for r in last), "the update moved codes: the comparison has something to compare"
    from lit_unlearn.deployment.layers import _rows_hold_whole_blocks
    from lit_unlearn.quantization import get_scheme

    whole = {_rows_hold_whole_blocks(get_scheme("nf4"), r["numel"] // cols, cols, 2)
             for r in last if r["scheme"] == "nf4" for cols in [40 if "down_proj" not in r["layer"] else 80]}
    assert whole == {True, False}, "both paths ran: rows measured per rank, and layers gathered"
    assert ("QuantizationSurvival under FSDP2 (2 ranks), 14 sharded layers; nf4: 6 on each rank's own rows, "
            "8 gathered one at a time; int4: 14 on each rank's own rows, 0 gathered") in run["log"], "and says so"
    functional = {r["scheme"]: r for r in run["functional"] if r["step"] == 4}
    for scheme in schemes:
        assert functional[scheme]["forget_q"] == pytest.approx(losses[scheme], abs=1e-5), scheme
        assert functional[scheme]["forget_fp"] == pytest.approx(losses["full"], abs=1e-5), scheme


@pytest.mark.parametrize(("lora", "objective"), [(None, "npo_klr"), ({"r": 4, "alpha": 8, "dropout": 0.1}, "npo_gdr")],
                         ids=["full-npo-klr", "lora-npo-gdr"])
def test_sharded_resume_mid_epoch_continues_exactly(wide_model_dir, text_files, tmp_path, lora, objective):
    """FSDP2Strategy writes one safetensors checkpoint per step through SafetensorsCheckpointIO (the whole
    state gathered on rank zero) and reads it back on every rank: resumed from the uninterrupted fit's
    checkpoint of step 3 (as after a preemption there), a second fit ends on the weights and survival history
    of the uninterrupted one."""
    common = {"sharded": True, "lora": lora, "objective": objective, "shuffle": True}
    straight = _fit(tmp_path, wide_model_dir, text_files, steps=6, name="straight",
                    checkpoints=str(tmp_path / "straight" / "ckpt"), **common)
    (step3,) = (tmp_path / "straight" / "ckpt").glob("*step=3.ckpt")
    from safetensors import safe_open

    with safe_open(str(step3), framework="pt") as f:  # a safetensors file, no pickle
        assert any("lora" in k or "layers" in k for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
    resumed = _fit(tmp_path, wide_model_dir, text_files, steps=6, name="resumed",
                   checkpoints=str(tmp_path / "resumed" / "ckpt"), ckpt_path=str(step3), **common)
    assert f"Restored all states from the checkpoint at {step3}" in resumed["log"], "it resumed, at step 3"
    from safetensors.torch import load_file

    expected = load_file(next(straight["saved"].glob("*.safetensors")))
    got = load_file(next(resumed["saved"].glob("*.safetensors")))
    assert expected.keys() == got.keys() and expected
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert resumed["history"] == straight["history"], "the survival history continues, W0 included"
    assert resumed["functional"] == straight["functional"]


EVALUATION = {"precisions": ["full", "nf4", "int8"], "tasks": ["verbmem_forget", "knowmem_forget", "privleak"],
              "max_items": 3, "batch_size": 2, "auc_retrain": 0.5, "verbmem_max_new_tokens": 6,
              "knowmem_max_new_tokens": 3, "progress": False, "cache_references": False}


def test_full_parameter_npo_klr_under_fsdp2_with_both_callbacks(wide_model_dir, text_files, tmp_path):
    """The issue's run: full-parameter NPO+KLR on 2 processes, the survival check and the MUSE table both
    on, the table made at fit end by the sharded model and equal to one process evaluating the saved one."""
    from tests.evaluation.muse_fixtures import write_muse_dir

    from lit_unlearn.evaluation import EvalData, evaluate

    muse = write_muse_dir(tmp_path / "muse")
    # Every 2 steps too: an evaluation between training steps, after which training goes on sharded.
    evaluation = {**EVALUATION, "data": str(muse), "output_dir": str(tmp_path / "table"), "every_n_steps": 2}
    run = _fit(tmp_path, wide_model_dir, text_files, sharded=True, lora=None, objective="npo_klr",
               evaluation=evaluation)
    assert run["history"] and run["table"]
    assert run["curve_steps"] == [2, 4], "evaluated mid-fit under FSDP2, and the fit went on"
    final = _final_model(wide_model_dir, run["saved"], lora=False)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(wide_model_dir)
    data = EvalData.load(str(muse), max_items=3)
    fast = {k: v for k, v in EVALUATION.items() if k not in ("precisions", "max_items", "cache_references")}
    rows = {r["precision"]: r for r in run["table"] if r["method"].startswith("npo_klr")}
    assert set(rows) == set(EVALUATION["precisions"])
    for precision, row in rows.items():
        expected = evaluate(final, tokenizer, data, precision=precision, **fast)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (precision, key)
    assert (tmp_path / "table" / "results.md").is_file()
