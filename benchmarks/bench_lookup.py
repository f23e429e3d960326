"""Where a compiled nf4 survival check spends its time: ``python benchmarks/bench_lookup.py``.

The weight-space check reads each weight once per scheme; its goal is 10% of the throughput of a plain
fp32 copy. This measures, side by side in one run on the same fp32 weights (``--rows`` x 64-weight blocks,
one torch thread, best of ``--repeats``), each compiled by ``torch.compile``'s C++ backend as the check is:

* ``copy``: ``dst.copy_(src)``, the memory-bound floor of any pass over the weights;
* ``scale``: the block absmax and ``x / absmax`` (the part every 4-bit encoder shares);
* ``chain``: that, then one nf4 level per weight by the 15-midpoint compare-and-select chain the check uses
  (:func:`lit_unlearn.quantization._fused._bnb4_lookup`), summed;
* ``count + gather``: the level index as a count of midpoints below, then a 16-entry table gather;
* ``binary search``: four compare steps, each gathering its midpoint;
* ``check``: the library's nf4 statistics of ``W0 -> W0 + ΔW``
  (:func:`lit_unlearn.quantization._fused.survival_sums`): two encodings (``W0``'s with its half step) and
  six sums, by the AVX-512 kernels (:mod:`lit_unlearn.quantization._simd`: a four-step binary search and
  one register permute per table) where the CPU has them, and by the compiled chain (``LIT_UNLEARN_SIMD=0``);
* ``deployed weight``: ``Q(W0 + ΔW)`` decoded, what the functional probe and quantization-aware LoRA
  form (:func:`lit_unlearn.quantization._fused.fake_quantize_merged`), both ways.

Writes ``benchmarks/results/lookup.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lit_unlearn.quantization import get_scheme
from lit_unlearn.quantization import _simd
from lit_unlearn.quantization._fused import _bnb4_lookup, fake_quantize_merged, survival_sums
from lit_unlearn.quantization.bnb4 import levels_for

RESULTS = Path(__file__).resolve().parent / "results"
GROUP = 64


def candidates() -> dict[str, Callable[..., torch.Tensor]]:
    levels = levels_for("nf4", "cpu")
    midpoints = tuple(levels.midpoints.tolist())
    compare = tuple(levels.by_level.compare.tolist())
    table = levels.by_level.compare.clone()
    padded = torch.cat([torch.tensor([float("-inf")]), levels.midpoints.float()])

    def scaled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        absmax = x.abs().amax(dim=1, keepdim=True)
        return x * (1.0 / absmax), absmax

    def scale(x: torch.Tensor) -> torch.Tensor:
        s, _ = scaled(x)
        return s.sum()

    def chain(x: torch.Tensor) -> torch.Tensor:
        s, absmax = scaled(x)
        (level,) = _bnb4_lookup(s, midpoints, compare)
        return (level * absmax).sum()

    def count_gather(x: torch.Tensor) -> torch.Tensor:
        s, absmax = scaled(x)
        index = torch.zeros_like(s, dtype=torch.int64)
        for midpoint in midpoints:
            index = index + (s > midpoint).long()
        return (table[index] * absmax).sum()

    def binary_search(x: torch.Tensor) -> torch.Tensor:
        s, absmax = scaled(x)
        index = torch.zeros_like(s, dtype=torch.int64)
        for step in (8, 4, 2, 1):
            index = torch.where(s > padded[index + step], index + step, index)
        return (table[index] * absmax).sum()

    return {"scale": scale, "chain": chain, "count + gather": count_gather, "binary search": binary_search}


def without_simd(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the AVX-512 kernels off: the torch.compile kernel's compare-and-select chain."""

    def run() -> object:
        with _simd.disabled():
            return fn()

    return run


def best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 14, help="64-weight blocks (2^14: 2^20 weights)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(args.rows, GROUP)
    delta = torch.randn_like(x) * 1e-4
    dst = torch.empty_like(x)
    # The same chunk size the check uses, so the check's timing is one kernel call.
    nf4 = get_scheme("nf4")
    flat, flat_delta = x.reshape(-1), delta.reshape(-1)
    fns: dict[str, Callable[[], object]] = {"copy": lambda: dst.copy_(x)}
    for name, fn in candidates().items():
        compiled = torch.compile(fn, dynamic=True)
        fns[name] = lambda compiled=compiled: compiled(x)
    fns["check"] = lambda: survival_sums(flat, flat_delta, True, nf4, GROUP)
    fns["check, compiled chain"] = without_simd(lambda: survival_sums(flat, flat_delta, True, nf4, GROUP))
    fns["deployed weight"] = lambda: fake_quantize_merged(x, delta, nf4, GROUP)
    fns["deployed weight, compiled chain"] = without_simd(lambda: fake_quantize_merged(x, delta, nf4, GROUP))
    # Interleaved rounds: every variant sees the same load.
    seconds = dict.fromkeys(fns, float("inf"))
    for _ in range(3):
        for name, fn in fns.items():
            seconds[name] = min(seconds[name], best(fn, args.repeats // 3))
    numel = x.numel()
    rows = [
        {"variant": name, "seconds": s, "weights_per_s": numel / s, "share_of_copy": seconds["copy"] / s}
        for name, s in seconds.items()
    ]
    for r in rows:
        print(f"{r['variant']:>14}: {r['weights_per_s'] / 1e6:8.0f} M weights/s, {r['share_of_copy']:6.1%} of a copy")
    if args.no_write:
        return
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} thread", "torch": torch.__version__,
              "weights": numel, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lookup.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# The nf4 lookup against a copy: what bounds the compiled survival check",
        "",
        f"`python benchmarks/bench_lookup.py` on {result['machine']}, torch {result['torch']}; {numel:,} fp32 "
        "weights in 64-weight blocks, each variant compiled (`torch.compile`, C++ backend) and timed best of "
        f"{args.repeats} in interleaved rounds.",
        "",
        "| variant | M weights/s | share of an fp32 copy |",
        "|---|---|---|",
        *[f"| {r['variant']} | {r['weights_per_s'] / 1e6:.0f} | {r['share_of_copy']:.1%} |" for r in rows],
        "",
        f"AVX-512 kernels in use: {_simd.applies((x,), GROUP)}.",
        "",
    ]
    (RESULTS / "lookup.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
