"""Benchmark lit_unlearn.quantization on the CPU: ``python benchmarks/bench_quantization.py``.

Measured side by side in one run, for fp32 weights of 2048x8192 and 4096x4096:

* nf4/fp4 ``quantize`` against ``bitsandbytes.functional.quantize_4bit`` on the same CPU (the packed codes
  and absmax are asserted bit-identical first), as a speed-up;
* ``survival_stats`` as it runs by default (compiled kernel, see ``lit_unlearn.quantization._fused``)
  and eagerly (``LIT_UNLEARN_COMPILE=0``, with the cached reference ``Q(W0)`` a LoRA run passes), as
  weights per second and as a share of the throughput of ``dst.copy_(src)`` over the same number of fp32
  elements, the memory-bound floor of any pass that reads every weight;
* the peak extra resident memory of one ``survival_stats`` call, relative to the matrix.

Timing: best of several runs (wall clock), all with one intra-op thread by default (``--threads N`` to
change it). One thread is the reproducible setting on a shared machine: the checks run ~30 small ops per
chunk, and when other processes keep the cores busy every multi-threaded op waits for a descheduled
worker, which can make them 10-30x slower than on one thread, while the single big copy barely notices.
The copy is re-timed next to every measurement so that both see the same load.

Memory: in a child process per matrix, with glibc told to return every allocation of 64 KiB or more to the
system on free (``MALLOC_MMAP_THRESHOLD_``), Linux's peak-RSS counter (``VmHWM``) is reset through
``/proc/self/clear_refs`` right before each call; peak extra = ``VmHWM`` after the call minus RSS before
it. That counts every page the call touches (buffers, lookup tables, allocator overhead).

Writes ``benchmarks/results/quantization.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from lit_unlearn._logging import silence_bitsandbytes
from lit_unlearn.quantization import quantize, survival_stats

SHAPES = [(2048, 8192), (4096, 4096)]
SURVIVAL_SCHEMES = ["nf4", "fp4", "int4", "int8"]
RESULTS = Path(__file__).resolve().parent / "results"
# An update of the size the papers discuss: lr-1e-5 full fine-tuning moves weights by ~1e-4 of their scale.
UPDATE_SCALE = 1e-4


def best_time(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def weights(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen) * 0.02
    w1 = w0 + UPDATE_SCALE * 0.02 * torch.randn(shape, generator=gen)
    return w0, w1


def bench_quantizer(bnb, w: torch.Tensor, quant_type: str) -> dict:
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    ours_packed, ours_absmax = quantize(w, quant_type).to_bitsandbytes()
    assert torch.equal(ours_packed, packed) and torch.equal(ours_absmax, state.absmax), "not bit-identical"
    # The assertion above was the warm-up; bitsandbytes takes seconds per call.
    t_bnb = best_time(lambda: bnb.quantize_4bit(w, blocksize=64, quant_type=quant_type), 1, warm_up=False)
    t_ours = best_time(lambda: quantize(w, quant_type), repeats=3)
    return {"bitsandbytes_s": t_bnb, "ours_s": t_ours, "speedup": t_bnb / t_ours, "bit_identical": True}


def compile_mode(enabled: bool) -> None:
    os.environ["LIT_UNLEARN_COMPILE"] = "1" if enabled else "0"


def bench_survival(w0: torch.Tensor, w1: torch.Tensor, scheme: str) -> dict:
    dst = torch.empty_like(w0)
    reference = quantize(w0, scheme)
    row = {}
    for label, ref in [("compiled", None), ("eager", reference)]:
        compile_mode(label == "compiled")
        t = best_time(lambda: survival_stats(w0, w1, scheme, reference=ref), repeats=2)  # noqa: B023
        t_copy = best_time(lambda: dst.copy_(w0), repeats=10)
        row[label] = {
            "seconds": t, "weights_per_s": w0.numel() / t, "copy_seconds": t_copy, "share_of_copy": t_copy / t
        }
    compile_mode(True)
    return row


_MEMORY_CHILD = r"""
import json, os, sys, torch
from lit_unlearn.quantization import quantize, survival_stats

def rss_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

shape, schemes = json.loads(sys.argv[1])
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
w0 = torch.randn(shape, generator=gen) * 0.02
w1 = w0 + 2e-6 * torch.randn(shape, generator=gen)
out = {}
for scheme in schemes:
    reference = quantize(w0, scheme)
    for label, ref in [("compiled", None), ("eager", reference)]:
        os.environ["LIT_UNLEARN_COMPILE"] = "1" if label == "compiled" else "0"
        survival_stats(w0, w1, scheme, reference=ref)  # compiles; first-call allocations
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = rss_kib("VmRSS:")
        survival_stats(w0, w1, scheme, reference=ref)
        out[f"{scheme}/{label}"] = (rss_kib("VmHWM:") - before) * 1024
print(json.dumps(out))
"""


def bench_memory(shape: tuple[int, int]) -> dict | None:
    if not Path("/proc/self/clear_refs").exists():
        return None
    child = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, json.dumps([shape, SURVIVAL_SCHEMES])],
        capture_output=True, text=True, check=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    matrix_bytes = shape[0] * shape[1] * 4
    peaks = json.loads(child.stdout.strip().splitlines()[-1])
    return {key: {"peak_extra_bytes": v, "of_matrix": v / matrix_bytes} for key, v in peaks.items()}


def machine() -> dict:
    model = platform.processor()
    if Path("/proc/cpuinfo").exists():
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# lit_unlearn.quantization on the CPU",
        "",
        f"`python benchmarks/bench_quantization.py` — {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"{m['torch_threads']} intra-op thread(s), 1-min load average {m['load_average_1min']:.1f} "
        "at the start "
        "(other processes shared the machine).",
        "",
        "## nf4 / fp4 quantize vs bitsandbytes (block 64, fp32, bit-identical)",
        "",
        "| matrix | type | bitsandbytes (s) | ours (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for shape, per_shape in results["shapes"].items():
        for qt, row in per_shape["quantize"].items():
            times = f"{row['bitsandbytes_s']:.3f} | {row['ours_s']:.3f} | {row['speedup']:.1f}x"
            lines.append(f"| {shape} | {qt} | {times} |")
    lines += [
        "",
        "## survival_stats throughput, as a share of `dst.copy_(src)` over the same fp32 elements",
        "",
        "| matrix | scheme | check | Mweights/s | share of copy | peak extra memory / matrix |",
        "|---|---|---|---|---|---|",
    ]
    for shape, per_shape in results["shapes"].items():
        for scheme, row in per_shape["survival"].items():
            for label, r in row.items():
                mem = (per_shape["memory"] or {}).get(f"{scheme}/{label}")
                mem_text = f"{mem['of_matrix']:.2f}" if mem else "n/a"
                lines.append(
                    f"| {shape} | {scheme} | {label} | "
                    f"{r['weights_per_s'] / 1e6:.0f} | {100 * r['share_of_copy']:.1f}% | {mem_text} |"
                )
    lines += ["", results["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    silence_bitsandbytes()
    import bitsandbytes.functional as bnb

    results = {"machine": machine(), "update_scale": UPDATE_SCALE, "shapes": {}}
    for shape in SHAPES:
        w0, w1 = weights(shape)
        results["shapes"][f"{shape[0]}x{shape[1]}"] = {
            "quantize": {qt: bench_quantizer(bnb, w0, qt) for qt in ("nf4", "fp4")},
            "survival": {scheme: bench_survival(w0, w1, scheme) for scheme in SURVIVAL_SCHEMES},
            "memory": bench_memory(shape),
        }
        del w0, w1
    results["notes"] = (
        "Times are the best of 2-3 runs after a warm-up (bitsandbytes: 1 run, it takes seconds; the "
        "compiled check's warm-up compiles it); the copy is "
        "the best of 10, re-timed next to "
        "each survival measurement. The update is ΔW ~ 1e-4 of the weights' scale (lr-1e-5 fine-tuning). "
        "Peak extra memory: VmHWM minus RSS around one call, in a child process that returns freed memory "
        "to the system. 'compiled' is the compiled kernel (given only the weights), 'eager' the check with "
        "LIT_UNLEARN_COMPILE=0 and the cached Q(W0) the callback passes. By default a CPU check of a weight of "
        "2^20 elements or more runs compiled, except round-to-nearest formats given cached codes (int4 here), "
        "which stay eager."
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (RESULTS / "quantization.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
