"""Benchmark the GGUF quantizers and the survival check per GGUF format: ``python benchmarks/bench_gguf.py``.

Measured side by side in one run, on random fp32 weights of SmolLM2-135M's MLP shape (576 x 1536: 576
rows of 1536 weights, whole 256-weight super-blocks) and a Llama-1B-sized 2048 x 2048, per format:

* our quantizer (:func:`~lit_unlearn.quantization.gguf_bytes`: codes, scales and the block bytes a
  ``.gguf`` stores; :func:`~lit_unlearn.quantization.quantize` alone beside it) against ggml itself
  (``ggml_quantize_chunk`` from llama-cpp-python's ``libggml-base``, through ctypes: the reference C
  quantizers ``llama-quantize`` runs without an importance matrix, one thread) and against the ``gguf``
  package's numpy port (legacy types only: it has no K-quant quantizer);
* the survival check (``survival_stats``: Q(W0), Q(W1), their codes, norms and residual) in weights per
  second, as a share of ``dst.copy_(src)`` of as many fp32 elements (the memory-bound floor of any pass
  that reads every weight), as ``bench_survival.py`` measures it.

All three quantizers write the same bytes (tested in tests/quantization/test_gguf_*.py), so the times
compare equal work. Timing: wall clock, best of ``--repeats`` after one warm-up run, ``--threads``
intra-op threads (default 1). Writes ``benchmarks/results/gguf.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lit_unlearn.quantization import gguf_bytes, quantize, survival_stats
from lit_unlearn.quantization.gguf_bytes import GGML_TYPE

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")
SHAPES = {"smollm2-mlp 576x1536": (576, 1536), "2048x2048": (2048, 2048)}
LEGACY = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def ggml_library() -> ctypes.CDLL:
    """ggml's ``ggml_quantize_chunk`` from llama-cpp-python's bundled libraries."""
    import llama_cpp

    for path in sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*")):
        lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        return lib
    raise RuntimeError("llama-cpp-python's libggml-base was not found (pip install 'lit-unlearn[test]').")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_shape(shape: tuple[int, int], repeats: int) -> list[dict]:
    import gguf

    lib = ggml_library()
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=g) * 0.02
    w1 = w0 + 1e-4 * torch.randn(shape, generator=g)
    x = w0.numpy()
    src, dst = torch.randn(w0.numel()), torch.empty(w0.numel())
    rows = []
    for name in FORMATS:
        out = np.empty_like(gguf_bytes(w0, name))

        def ggml() -> None:
            lib.ggml_quantize_chunk(GGML_TYPE[name], x.ctypes.data, out.ctypes.data, 0, shape[0], shape[1], None)

        qtype = gguf.GGMLQuantizationType[name.upper()]
        numpy_port = (lambda: gguf.quants.quantize(x, qtype)) if name in LEGACY else None
        t_ours = best_time(lambda: gguf_bytes(w0, name), repeats)
        t_quantize = best_time(lambda: quantize(w0, name), repeats)
        t_ggml = best_time(ggml, repeats)
        t_numpy = best_time(numpy_port, repeats) if numpy_port else None
        t_check = best_time(lambda: survival_stats(w0, w1, name), repeats)
        # QuantizationSurvival keeps Q(W0) from the first check: a later check quantizes W1 alone.
        reference = quantize(w0, name)
        t_cached = best_time(lambda: survival_stats(w0, w1, name, reference=reference), repeats)
        t_copy = best_time(lambda: dst.copy_(src), repeats)
        rows.append({
            "format": name, "shape": list(shape), "ours_s": t_ours, "quantize_s": t_quantize, "ggml_s": t_ggml,
            "gguf_numpy_s": t_numpy, "ours_over_ggml": t_ours / t_ggml,
            "gguf_numpy_over_ours": None if t_numpy is None else t_numpy / t_ours,
            "check_s": t_check, "copy_s": t_copy, "check_weights_per_s": w0.numel() / t_check,
            "check_vs_copy": t_copy / t_check, "cached_check_s": t_cached, "cached_check_vs_copy": t_copy / t_cached,
        })
        print(f"{shape} {name}: ours {t_ours * 1e3:.1f} ms, ggml {t_ggml * 1e3:.1f} ms, "
              f"numpy {'—' if t_numpy is None else f'{t_numpy * 1e3:.1f} ms'}, check {t_check * 1e3:.1f} ms "
              f"({t_copy / t_check:.1%} of a copy)", flush=True)
    return rows


def write_markdown(result: dict, path: Path) -> None:
    def ms(seconds: float | None) -> str:
        return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"

    lines = [
        "# GGUF formats: our quantizer against ggml and gguf's numpy port; the survival check per format",
        "",
        f"`python benchmarks/bench_gguf.py` on {result['machine']}; torch {result['torch']}, "
        f"{result['threads']} intra-op thread(s), best of {result['repeats']} after a warm-up. ggml = "
        "`ggml_quantize_chunk` (llama-cpp-python's libggml-base, reference C quantizers, one thread); numpy = "
        "`gguf.quants.quantize` (legacy types only). Ours = `gguf_bytes` (the file's block bytes); `quantize` "
        "= codes and scales alone. All three write identical bytes (tests/quantization/test_gguf_*.py). "
        "Check = `survival_stats(W0, W1, format)`, throughput as a share of an fp32 `copy_` of as many elements.",
        "",
        "| shape | format | ours | quantize | ggml | gguf numpy | ours / ggml | numpy / ours | check | check weights/s "
        "| vs fp32 copy | check, Q(W0) kept | its share of a copy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in result["shapes"].items():
        for r in rows:
            numpy_ratio = "—" if r["gguf_numpy_over_ours"] is None else f"{r['gguf_numpy_over_ours']:.2f}x"
            lines.append(
                f"| {label} | {r['format']} | {ms(r['ours_s'])} | {ms(r['quantize_s'])} | {ms(r['ggml_s'])} | "
                f"{ms(r['gguf_numpy_s'])} | {r['ours_over_ggml']:.2f}x | {numpy_ratio} | {ms(r['check_s'])} | "
                f"{r['check_weights_per_s'] / 1e6:.1f} M | {r['check_vs_copy']:.1%} | {ms(r['cached_check_s'])} | "
                f"{r['cached_check_vs_copy']:.1%} |"
            )
    lines += ["", "ours / ggml above 1 means our quantizer is slower than ggml's C; numpy / ours above 1 means "
              "gguf's numpy port is slower than ours. The K-quants run a least-squares search per sub-block "
              "(make_qkx2_quants: 16-21 candidate grids; make_qx_quants: 19), hence their cost in every "
              "implementation: where the C kernels load, ours is ggml's reference C transcribed (scalar, as ggml "
              "runs it), so its K-quants take about ggml's time, and a check cannot run faster than that search "
              "over W1 (the 'Q(W0) kept' column: what QuantizationSurvival runs after its first check). Byte packing is "
              "what separates `gguf_bytes` from `quantize`; the survival check never packs. Measured on a "
              "machine shared with other jobs: single rows vary by up to 2x between runs, the ratios less."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)", "torch": torch.__version__,
        "threads": args.threads, "repeats": args.repeats,
        "shapes": {label: bench_shape(shape, args.repeats) for label, shape in SHAPES.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "gguf.md")
    print(f"wrote {RESULTS / 'gguf.json'} and {RESULTS / 'gguf.md'}")


if __name__ == "__main__":
    main()
