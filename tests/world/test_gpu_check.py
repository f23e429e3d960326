"""benchmarks/gpu_check.py runs end to end at toy sizes without a GPU (``--smoke``), so the one command a
lent GPU runs is known to work before the device time is spent; on this CPU its quantization part is
checked against what the CUDA kernel computes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_script

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_run(test_world, world_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(world_cache))
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "test")
    module = load_script(SCRIPT, "gpu_check")
    report = module.main(["--smoke", "--out", str(tmp_path)])
    assert report["quantization"]["failures"] == [] and report["quantization"]["checks"] > 100
    assert report["evaluation"] == {"run": False, "why": "the real-kernel path needs CUDA"}
    assert report["throughput"]["weights"] > 0 and report["throughput"]["check_s"] > 0
    for step in ("lora_step", "full_step"):
        assert report[step]["step_s"] > 0 and report[step]["check_s"] > 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["quantization"] == report["quantization"]
    assert "all bit-identical" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_reports_a_difference(monkeypatch):
    """The comparison fires: a decoder that is off by one level's worth somewhere is named."""
    import torch

    import lit_unlearn.quantization.bnb_decode as decode

    module = load_script(SCRIPT, "gpu_check_tp")
    real = decode.dequantize_4bit_as_cuda

    def off(*args, **kwargs):
        values = real(*args, **kwargs).clone()
        values.view(-1)[7] += 0.5
        return values

    monkeypatch.setattr(decode, "dequantize_4bit_as_cuda", off)
    checks = module._compare_weight(torch.randn(64, 128) * 0.02)
    assert checks["nf4_values"] is False and checks["fp4_values"] is False
    assert checks["nf4_codes"] and checks["int8_values"], "only what differs is flagged"
