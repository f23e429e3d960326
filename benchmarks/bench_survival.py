"""Benchmark the survival engine's weight-space check: ``python benchmarks/bench_survival.py``.

Measured side by side in one run, for full-parameter (snapshot) and LoRA (r=16) unlearning, on the tiny
test Llama and on a stack of Llama-3.2-1B-shaped blocks (hidden 2048, intermediate 8192, 32 heads, 8 KV
heads; ``--layers`` of the 16, random weights):

* one check (every watched linear layer, nf4 and fp4, as the callback runs it) against one training step
  of the same model (goal <= 1x): forward + backward + AdamW on the shipped configs' batch (``--batch``
  16 sequences of ``--seq`` 128 tokens: 8 forget + 8 retain), and on a single sequence, with the step
  size in tokens at which a step costs as much as a check;
* the naive check (deepcopy the model, merge LoRA, fake-quantize every weight of it and of a copy of the
  original, compare dequantized tensors) against ours (goal >= 5x);
* peak extra memory of one check against the largest watched weight matrix (goal <= 2x), on one block
  in a child process: Linux's peak-RSS counter ``VmHWM`` is reset through ``/proc/self/clear_refs``
  right before the check; extra = ``VmHWM`` after it minus RSS before it (every byte counts);
* check throughput (watched weights per second, all schemes) against ``dst.copy_(src)`` of as many fp32
  elements, the memory-bound floor of any pass that reads every weight (goal >= 10%).

The 1B-shaped stack uses a 2048-token vocabulary: embeddings and the output head are never watched, and
Llama-3.2's 128k-token head (262M weights) would inflate the training step and flatter the ratio.
Timing: wall clock, best of ``--repeats`` after one warm-up run, ``--threads`` intra-op threads (default
1: on a shared machine, idle-spinning threads make small ops erratic). The copy is re-timed next to each
check so that both see the same machine load.

Writes ``benchmarks/results/survival.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_unlearn._logging import silence_bitsandbytes
from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.deployment import quantize_model_
from lit_unlearn.survival import SurvivalEngine
from lit_unlearn.survival.layers import delta_buffer

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMES = ("nf4", "fp4")
MODELS = {
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=64
    ),
    "llama-1b-shaped": dict(
        hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=2048,
    ),
}


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, run interleaved so that all of them see the
    same machine load (the callers warm each function up first)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def build(model: str, layers: int, mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=layers, max_position_embeddings=512, tie_word_embeddings=False, **MODELS[model]
    )
    net = LlamaForCausalLM(config)
    return apply_lora(net, LoRA(r=16, alpha=32, dropout=0.0)) if mode == "lora" else net


def training_step(net: torch.nn.Module, seq: int, batch: int = 1) -> Callable[[], None]:
    """Forward + backward + AdamW over the trainable parameters, on ``batch`` sequences of ``seq`` tokens."""
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, net.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        net(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def our_check(net: torch.nn.Module) -> tuple[Callable[[], object], list]:
    """The callback's weight-space check, prepared as at fit start (snapshot or LoRA, cached Q(W0)): the
    engine's per-layer statistics and the rows the callback keeps."""
    engine = SurvivalEngine(net, SCHEMES)
    engine.prepare()
    return (lambda: engine.weight_check().rows(step=1)), engine.layers


def eager(check: Callable[[], object]) -> Callable[[], object]:
    """``check`` with the compiled kernels switched off (``LIT_UNLEARN_COMPILE=0``)."""

    def run() -> object:
        previous = os.environ.get("LIT_UNLEARN_COMPILE")
        os.environ["LIT_UNLEARN_COMPILE"] = "0"
        try:
            return check()
        finally:
            if previous is None:
                del os.environ["LIT_UNLEARN_COMPILE"]
            else:
                os.environ["LIT_UNLEARN_COMPILE"] = previous

    return run


def naive_check(net: torch.nn.Module, original: torch.nn.Module | None) -> Callable[[], object]:
    """Deepcopy, merge, fake-quantize everything, compare: what one writes without the callback.

    ``original`` is the full-parameter run's copy of the initial model; ``None`` means LoRA, where the
    original is the base (``unload``) and the current model the merged one (``merge_and_unload``).
    """

    def linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
        return {
            n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear and not n.endswith("lm_head")
        }

    @torch.no_grad()
    def check() -> dict:
        results = {}
        for scheme in SCHEMES:
            if original is None:
                current, reference = copy.deepcopy(net).merge_and_unload(), copy.deepcopy(net).unload()
                base = linears(reference)
                deltas = {n: m.weight - base[n].weight for n, m in linears(current).items()}
            else:
                current, reference = copy.deepcopy(net), copy.deepcopy(original)
                deltas = None  # read from the live model and the kept original, layer by layer
            quantize_model_(current, scheme)
            quantize_model_(reference, scheme)
            q0 = linears(reference)
            for name, module in linears(current).items():
                if deltas is None:
                    delta = net.get_submodule(name).weight - original.get_submodule(name).weight
                else:
                    delta = deltas[name]
                dq = module.weight - q0[name].weight
                results[(scheme, name)] = (
                    float((dq != 0).float().mean()),
                    float((dq * delta).sum() / (delta * delta).sum().clamp_min(1e-30)),
                    float(torch.nn.functional.cosine_similarity(dq.flatten(), delta.flatten(), dim=0)),
                    float((dq - delta).norm() / delta.norm().clamp_min(1e-30)),
                )
            del current, reference, deltas
        return results

    return check


def bench_case(model: str, mode: str, layers: int, seq: int, batch: int, repeats: int) -> dict:
    net = build(model, layers, mode)
    original = copy.deepcopy(net) if mode == "full" else None
    step, batch_step = training_step(net, seq), training_step(net, seq, batch)
    step()  # warm-up, and a real update so that ΔW is non-zero everywhere (LoRA's B starts at zero)
    batch_step()
    check, watched = our_check(net)
    start = time.perf_counter()
    check()  # compiles the kernels of large layers, unless torch's on-disk cache has them
    t_first = time.perf_counter() - start
    eager_check = eager(check)
    eager_check()
    numel = sum(layer.numel for layer in watched)
    src, dst = torch.randn(numel), torch.empty(numel)
    dst.copy_(src)

    fns = {"step": step, "batch_step": batch_step, "check": check, "eager": eager_check,
           "copy": lambda: dst.copy_(src)}
    if mode == "lora":
        # The share of the check spent forming ΔW = scaling·B·A (lit_unlearn.adapters.lora_delta).
        fns["lora_delta"] = lambda: [layer.delta(buffer) for buffer in [delta_buffer(watched)]
                                     for layer in watched]
    times = best_times(fns, repeats)
    t_step, t_check, t_copy = times["step"], times["check"], times["copy"]
    del src, dst
    # Seconds of deep copies per run: one cold run is representative and keeps the benchmark short.
    t_naive = best_times({"naive": naive_check(net, original)}, repeats=1)["naive"]
    return {
        "model": model, "mode": mode, "layers": layers, "seq_tokens": seq, "watched_weights": numel,
        "schemes": list(SCHEMES),
        "check_s": t_check, "first_check_s": t_first, "eager_check_s": times["eager"],
        "compiled_speedup": times["eager"] / t_check, "train_step_s": t_step, "batch": batch,
        "batch_step_s": times["batch_step"], "check_over_batch_step": t_check / times["batch_step"],
        "naive_check_s": t_naive, "copy_s": t_copy,
        "check_over_step": t_check / t_step,
        "tokens_per_step_at_parity": seq * t_check / t_step,
        "naive_over_check": t_naive / t_check,
        "check_weights_per_s": numel / t_check,
        "copy_elements_per_s": numel / t_copy,
        "throughput_vs_copy": t_copy / t_check,
        "throughput_per_scheme_vs_copy": len(SCHEMES) * t_copy / t_check,
        "lora_delta_s": times.get("lora_delta"),
    }


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_extra(fn: Callable[[], object]) -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _rss_bytes("VmRSS")
    fn()
    return _rss_bytes("VmHWM") - before


def memory_child(model: str, mode: str) -> dict:
    """Run in a child process: peak extra RSS of our check and of the naive one, on one block.

    Our check streams layer by layer, so its peak does not grow with depth; one block keeps the child
    quick. The naive check's peak grows with the model (it copies it whole).
    """
    net = build(model, 1, mode)
    original = copy.deepcopy(net) if mode == "full" else None
    with torch.no_grad():  # a non-zero ΔW without an optimizer's state in the measured process
        for param in net.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param), alpha=1e-3)
    check, watched = our_check(net)
    check()  # first-call allocations (tables, allocator pools) are not what a check costs
    largest = max(layer.linear.weight.numel() * layer.linear.weight.element_size() for layer in watched)
    ours = _peak_extra(check)
    naive = _peak_extra(naive_check(net, original))
    return {
        "blocks": 1, "check_extra_bytes": ours, "naive_extra_bytes": naive, "largest_weight_bytes": largest,
        "check_extra_over_largest": ours / largest, "naive_extra_over_largest": naive / largest,
    }


def measure_memory(model: str, mode: str, threads: int) -> dict:
    args = [sys.executable, __file__, "--memory-child", model, mode, "--threads", str(threads)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# QuantizationSurvival: cost of one weight-space check (nf4 + fp4)",
        "",
        f"`python benchmarks/bench_survival.py` on {result['machine']}; torch {result['torch']}, "
        f"{result['threads']} intra-op thread(s), best of {result['repeats']} interleaved runs. Training "
        f"step = forward + backward + AdamW on the shipped configs' batch of {result['batch']} sequences "
        f"of {result['seq_tokens']} tokens (8 forget + 8 retain), and on one sequence. Goals: check/step "
        "<= 1, naive/check >= 5, extra memory <= 2x the largest weight, throughput >= 10% of an fp32 copy.",
        "",
        "| model | mode | watched weights | check (ΔW part) | eager check | first check "
        "| train step: batch, 1 seq | check/step: batch, 1 seq | tokens/step at parity | naive/check "
        "| weights/s | vs fp32 copy: all schemes, per scheme | extra memory / largest weight: ours, naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        mem = c.get("memory")
        mem_text = "—"
        if mem:
            mem_text = f"{mem['check_extra_over_largest']:.2f}x, {mem['naive_extra_over_largest']:.1f}x"
        delta = f" ({c['lora_delta_s'] * 1e3:.0f} ms)" if c["lora_delta_s"] else ""
        lines.append(
            f"| {c['model']} ({c['layers']} blocks) | {c['mode']} | {c['watched_weights']:,} "
            f"| {c['check_s'] * 1e3:.1f} ms{delta} | {c['eager_check_s'] * 1e3:.1f} ms "
            f"| {c['first_check_s'] * 1e3:.0f} ms | {c['batch_step_s'] * 1e3:.1f} ms, "
            f"{c['train_step_s'] * 1e3:.1f} ms "
            f"| {c['check_over_batch_step']:.2f}, {c['check_over_step']:.2f} "
            f"| {c['tokens_per_step_at_parity']:.0f} | {c['naive_over_check']:.1f} "
            f"| {c['check_weights_per_s'] / 1e6:.1f} M | {c['throughput_vs_copy']:.1%}, "
            f"{c['throughput_per_scheme_vs_copy']:.1%} | {mem_text} |"
        )
    lines += ["", result["note"], ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layers", type=int, default=2, help="blocks of the 1B-shaped stack (Llama-3.2-1B has 16)"
    )
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence of the training step")
    parser.add_argument("--batch", type=int, default=16, help="sequences in the batched training step")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed rounds after one warm-up; the best counts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    silence_bitsandbytes()
    torch.set_num_threads(args.threads)

    if args.memory_child:
        model, mode = args.memory_child
        print(json.dumps(memory_child(model, mode)))
        return

    cases = []
    for model, layers in (("tiny", 2), ("llama-1b-shaped", args.layers)):
        for mode in ("full", "lora"):
            repeats = args.repeats if model != "tiny" else 10
            case = bench_case(model, mode, layers, args.seq, args.batch, repeats)
            if model != "tiny":
                case["memory"] = measure_memory(model, mode, args.threads)
            cases.append(case)
            print(
                f"{model:>16} {mode:>4}: check {case['check_s'] * 1e3:8.1f} ms"
                f" (eager {case['eager_check_s'] * 1e3:.1f} ms, first {case['first_check_s']:.1f} s)"
                f" | step {case['batch_step_s'] * 1e3:8.1f} ms ({case['train_step_s'] * 1e3:.1f} ms for one"
                f" sequence) | check/step {case['check_over_batch_step']:5.2f}"
                f" ({case['check_over_step']:.2f})"
                f" | naive/check {case['naive_over_check']:5.1f}"
                f" | {case['check_weights_per_s'] / 1e6:6.1f} M weights/s"
                f" = {case['throughput_vs_copy']:6.1%} of copy"
                + (f" | ΔW {case['lora_delta_s'] * 1e3:.0f} ms of it" if case["lora_delta_s"] else "")
                + (f" | extra memory {case['memory']['check_extra_over_largest']:.2f}x largest weight"
                   f" (naive {case['memory']['naive_extra_over_largest']:.1f}x)" if "memory" in case else ""),
                flush=True,
            )

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats, "seq_tokens": args.seq,
        "batch": args.batch,
        "cases": cases,
        "note": (
            f"The 1B-shaped stack has {args.layers} of Llama-3.2-1B's 16 blocks (the check and the step both "
            "scale linearly in blocks, so the ratios hold for the full depth) and a 2048-token vocabulary. "
            "Memory is measured on one block (the check streams layer by layer; the naive check's peak grows "
            "with depth). The tiny model is timed best of 10. A training step of the papers' size (16 "
            "sequences of 2048 tokens) is 256x the single sequence timed here. Layers of at least 2^17 "
            "weights are checked by the AVX-512 C kernels where the CPU has them (lit_unlearn.quantization._simd"
            "), else by torch.compile's (lit_unlearn.quantization._fused); 'eager check' is the same check with "
            "LIT_UNLEARN_COMPILE=0, 'first check' the first call in the process, which builds or loads the "
            "kernels (torch's and lit-unlearn's on-disk caches may already hold them)."
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "survival.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "survival.md")
    print(f"wrote {RESULTS / 'survival.json'} and {RESULTS / 'survival.md'}")


if __name__ == "__main__":
    main()
