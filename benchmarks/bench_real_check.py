"""One survival check against one training step on the real model: ``python benchmarks/bench_real_check.py``.

SmolLM2-135M-Instruct as shipped (``real:smollm2``, a GGUF Q4_1 file loaded dequantized to fp32), on the
benchmark's own texts (``real:smollm2-data``: 8 forget and 8 retain sentences, one document per example),
measured side by side in one run, for LoRA (r 16 on every linear projection) and full-parameter
unlearning (NPO + GDR, ``UnlearningModule``'s training step and AdamW):

* one training step: forward + backward + optimizer step on the batch;
* one ``QuantizationSurvival`` check after an optimizer step, run by its engine
  (:class:`~lit_unlearn.survival.SurvivalEngine`): weight-space statistics over every watched layer and
  the functional probe (forget and retain losses of the current model, full precision and quantized),
  for the base's own format (``q4_1``, watched because the weights sit on its grid) plus ``nf4`` and
  ``int8`` (goal: check / step <= 1);
* the same check with the AVX-512 nf4/fp4 kernels off (``LIT_UNLEARN_SIMD=0``), side by side.

Timing: wall clock, best of ``--repeats`` interleaved rounds after a warm-up, ``--threads`` intra-op
threads (default 1; the machine is shared). ``--profile`` adds a cProfile of one check and its top lines
by cumulative and by own time. Writes ``benchmarks/results/real_check.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lit_unlearn import ForgetRetainDataModule, UnlearningModule
from lit_unlearn.adapters import LoRA
from lit_unlearn.callbacks._survival_probe import resolve_probe_loss, split_probe, to_device
from lit_unlearn.data.sources import resolve_path
from lit_unlearn.quantization import _simd
from lit_unlearn.survival import SurvivalEngine
from lit_unlearn.survival.layers import model_of

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMES = ("nf4", "int8")  # the base's q4_1 is added by format detection, as in a fit


def build(mode: str, batch: int) -> tuple[UnlearningModule, dict[str, Any]]:
    """The module with its model loaded, and one training batch ``{"forget": …, "retain": …}``."""
    torch.manual_seed(0)
    lora = LoRA(r=16, alpha=32, dropout=0.0) if mode == "lora" else None
    module = UnlearningModule("real:smollm2", objective="npo_gdr", lora=lora)
    module.configure_model()
    data = ForgetRetainDataModule(
        forget=resolve_path("real:smollm2-data/forget.jsonl"), retain=resolve_path("real:smollm2-data/retain.jsonl"),
        tokenizer="real:smollm2",
        max_length=64, packing="document", batch_size=batch, shuffle=False,
    )
    data.setup("fit")
    return module, next(iter(data.train_dataloader()))[0]


def training_step(module: UnlearningModule, batch: dict[str, Any]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    module.optimizers = lambda: optimizer  # what a Trainer would hand the step (it logs the learning rate)

    def step() -> None:
        module.training_step(batch, 0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def survival_check(
    module: UnlearningModule, batch: dict[str, Any]
) -> tuple[Callable[[], object], Callable[[], object], SurvivalEngine]:
    """The callback's check after one optimizer step, prepared as a fit prepares it: layers selected, the
    base's format detected and watched, ``Q(W0)`` cached, the probe taken and its original losses computed.

    Returns the whole check, its functional half alone, and the engine.
    """
    engine = SurvivalEngine(model_of(module), SCHEMES)
    found = engine.base_format()
    if found is not None and found not in {s.name for s in engine.schemes}:
        engine.add_scheme(found)
    engine.prepare()
    # Kept on the host and moved to the device for each check, as the callback keeps its probe.
    probe = [to_device(split_probe(batch), "cpu")]
    loss_fn = resolve_probe_loss(module, engine.model, to_device(probe[0]["forget"], module.device))
    original = engine.probe(loss_fn, [[to_device(b, module.device) for b in probe]], original=True)[0]

    def function_space() -> list[dict[str, Any]]:
        current = engine.probe(loss_fn, [[to_device(b, module.device) for b in probe]])[0]
        return engine.functional_rows(1, current, original)

    def check() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return engine.weight_check().rows(step=1), function_space()

    return check, function_space, engine


def without_simd(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the AVX-512 kernels off (``LIT_UNLEARN_SIMD=0``): the torch.compile kernels."""

    def run() -> object:
        with _simd.disabled():
            return fn()

    return run


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def profile(fn: Callable[[], object], lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--batch", type=int, default=8, help="forget and retain examples per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, profiles = [], {}
    for mode in args.modes:
        module, batch = build(mode, args.batch)
        step = training_step(module, batch)
        # Prepared before any step: W0 sits on the base's grid.
        check, function_space, engine = survival_check(module, batch)
        step()  # one optimizer step, so the check measures an update
        check()  # warm-up: compiles the fused kernels once per process
        times = best_times({"step": step, "check": check, "check_compiled": without_simd(check)}, args.repeats)
        # The check's halves, timed on their own next to it.
        halves = best_times({
            "weight_space": lambda: engine.weight_check().rows(step=1),
            "function_space": function_space,
        }, args.repeats)
        row = {
            "mode": mode, "schemes": [s.name for s in engine.schemes],
            "tokens": int(batch["forget"]["attention_mask"].sum() + batch["retain"]["attention_mask"].sum()),
            "watched_weights": sum(layer.numel for layer in engine.layers if layer.quantized),
            "step_s": times["step"], "check_s": times["check"], "check_per_step": times["check"] / times["step"],
            "check_compiled_s": times["check_compiled"],
            "check_compiled_per_step": times["check_compiled"] / times["step"],
            "weight_space_s": halves["weight_space"], "function_space_s": halves["function_space"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.profile:
            profiles[mode] = profile(check, 30)
            print(profiles[mode], flush=True)
        del module, engine, check, function_space, step

    if args.no_write:
        return
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats, "batch": args.batch,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_check.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# QuantizationSurvival on SmolLM2-135M: one check against one training step",
        "",
        f"`python benchmarks/bench_real_check.py` on {meta['machine']}; torch {meta['torch']}, {args.threads} "
        f"intra-op thread(s), best of {args.repeats} interleaved rounds. Model `real:smollm2` (GGUF Q4_1, loaded "
        f"as fp32); batch {args.batch} forget + {args.batch} retain sentences of `real:smollm2-data`; NPO + GDR. "
        "A check = weight-space statistics of every watched layer + the functional probe (forget and retain "
        "losses, full precision and per scheme). Goal: check / step <= 1.",
        "",
        "| mode | schemes | tokens | watched weights | train step | check | check / step | weight space | function space "
        "| check, compiled chain | its check / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {' + '.join(r['schemes'])} | {r['tokens']} | {r['watched_weights']:,} | "
            f"{r['step_s']:.2f} s | {r['check_s']:.2f} s | {r['check_per_step']:.2f} | {r['weight_space_s']:.2f} s | "
            f"{r['function_space_s']:.2f} s | {r['check_compiled_s']:.2f} s | {r['check_compiled_per_step']:.2f} |"
        )
    for mode, text in profiles.items():
        lines += ["", f"Profile of one {mode} check (cProfile, top lines by own time):", "", "```", *_top(text), "```"]
    (RESULTS / "real_check.md").write_text("\n".join(lines) + "\n")


def _top(profile_text: str, count: int = 14) -> list[str]:
    """The header and first ``count`` rows of the by-own-time table of :func:`profile`'s output."""
    table = profile_text.split("Ordered by: internal time")[-1].splitlines()
    start = next(i for i, line in enumerate(table) if line.strip().startswith("ncalls"))
    return [line.rstrip() for line in table[start : start + 1 + count]]


if __name__ == "__main__":
    sys.exit(main())
