"""Benchmark QLoRA against LoRA over a bf16 base: ``python benchmarks/bench_qlora.py``.

Measured side by side in one run, on a stack of Llama-3.2-1B-shaped blocks (hidden 2048, intermediate
8192, 32 heads, 8 KV heads; ``--layers`` of the 16, random weights, a 2048-token vocabulary), with a LoRA
adapter (r 16, alpha 32) on every linear projection, as the shipped configs train it:

* memory, in a fresh process, above its resident size once torch and transformers are imported: the
  model held after loading (RSS), the peak of ``--steps`` training steps (forward + backward + AdamW on
  ``--batch`` sequences of ``--seq`` tokens; Linux's peak-RSS counter ``VmHWM`` reset through
  ``/proc/self/clear_refs`` after loading), and the bytes of the model's parameters and buffers. QLoRA
  (nf4 base, bf16 compute) against a bf16 base, ratio QLoRA / bf16. Loading itself peaks higher for
  QLoRA on CPU (transformers reads bf16 weights and quantizes them), reported separately;
* step time: best of the steps after the first (warm-up), ratio QLoRA / bf16;
* the survival check's cost on each base: one weight-space check of every adapted layer (nf4 and fp4,
  as ``QuantizationSurvival`` runs it), against that base's training step. Over a 4-bit base each check
  also decodes ``W0`` from its codes; over a bf16 base ``W0`` is read as stored.

Each configuration runs in its own child process, so one's memory never counts against the other's.
Timing: wall clock, ``--threads`` intra-op threads. This machine has no GPU: on CPU bitsandbytes' 4-bit
matmul decodes the weight in torch for every call, so the step-time ratio here is an upper bound of what
a GPU kernel costs; the memory ratio is the point.

Writes ``benchmarks/results/qlora.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("bf16", "qlora")


def _vm(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmHWM``: peak RSS, ``VmRSS``: current)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _settle(model: torch.nn.Module) -> None:
    """Make the loaded model's memory what it holds: weights still mapped from the safetensors file are
    read into memory (a bf16 base is loaded lazily; a quantized one is not), and what loading freed is
    returned to the system, so resident size counts the model alike for both."""
    import ctypes
    import gc

    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _save_base(directory: Path, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)


def _child(kind: str, base: str, args: argparse.Namespace) -> dict:
    """Load, train ``args.steps`` steps and run one survival check; what was measured, as a dict."""
    from transformers import AutoModelForCausalLM

    from lit_unlearn._logging import silence_bitsandbytes
    from lit_unlearn.adapters import LoRA, apply_lora
    from lit_unlearn.survival.layers import delta_buffer, prepare_references, select_linear_layers
    from lit_unlearn.four_bit_base import FourBitBase
    from lit_unlearn.quantization import get_scheme
    from lit_unlearn.quantization.bnb_decode import keep_4bit_layout

    silence_bitsandbytes()
    torch.set_num_threads(args.threads)
    import bitsandbytes  # noqa: F401  (imported by both, so its libraries count in neither)

    baseline = _vm("VmRSS")
    extra = {}
    if kind == "qlora":
        extra["quantization_config"] = FourBitBase("nf4", "bfloat16").bitsandbytes_config()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, **extra)
    keep_4bit_layout(model)
    model = apply_lora(model, LoRA(r=16, alpha=32.0, dropout=0.0))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.train()
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    load_peak = _vm("VmHWM") - baseline
    _settle(model)
    loaded = _vm("VmRSS") - baseline
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step_times(batch: int) -> list[float]:
        ids = torch.randint(3, 2048, (batch, args.seq), generator=generator)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times

    times = step_times(args.batch)
    peak = _vm("VmHWM") - baseline
    # The same step at the shipped QLoRA config's batch (8 forget + 8 retain sequences of 128 tokens).
    shipped_times = step_times(args.shipped_batch)

    schemes = [get_scheme("nf4"), get_scheme("fp4")]
    layers = select_linear_layers(model, None)
    prepare_references(layers, schemes, {})
    checks = []
    for _ in range(2):
        start = time.perf_counter()
        buffer = delta_buffer(layers)
        for layer in layers:
            if layer.lora is not None and layer.quantized:
                layer.survival(schemes, buffer)
        checks.append(time.perf_counter() - start)
    return {
        "kind": kind, "loaded_rss_bytes": loaded, "load_peak_bytes": load_peak, "step_peak_bytes": peak,
        "model_bytes": held, "step_s": min(times[1:]), "shipped_step_s": min(shipped_times[1:]),
        "check_s": min(checks), "adapted_layers": sum(layer.lora is not None for layer in layers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder blocks of the 16 of Llama-3.2-1B")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--shipped-batch", type=int, default=16,
                        help="sequences of a step at the shipped config's batch (configs/qlora: 8 forget + 8 retain)")
    parser.add_argument("--steps", type=int, default=4, help="training steps; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.base, args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        _save_base(Path(tmp), args.layers)
        runs = {}
        for kind in KINDS:
            command = [sys.executable, __file__, "--child", kind, "--base", tmp, *_forwarded(args)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[kind] = json.loads(out.strip().splitlines()[-1])
    bf16, qlora = runs["bf16"], runs["qlora"]
    ratios = {
        "loaded_qlora_over_bf16": qlora["loaded_rss_bytes"] / bf16["loaded_rss_bytes"],
        "step_peak_qlora_over_bf16": qlora["step_peak_bytes"] / bf16["step_peak_bytes"],
        "model_bytes_qlora_over_bf16": qlora["model_bytes"] / bf16["model_bytes"],
        "step_time_qlora_over_bf16": qlora["step_s"] / bf16["step_s"],
        "check_over_step_bf16": bf16["check_s"] / bf16["step_s"],
        "check_over_step_qlora": qlora["check_s"] / qlora["step_s"],
        "check_over_shipped_step_bf16": bf16["check_s"] / bf16["shipped_step_s"],
        "check_over_shipped_step_qlora": qlora["check_s"] / qlora["shipped_step_s"],
        "check_qlora_over_bf16": qlora["check_s"] / bf16["check_s"],
    }
    result = {
        "setup": {**{k: v for k, v in vars(args).items() if k not in ("child", "base")},
                  "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                  "torch": torch.__version__},
        "runs": runs,
        "ratios": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qlora.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "qlora.md").write_text(_markdown(result))
    print(_markdown(result))


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("layers", "batch", "shipped_batch", "seq", "steps", "threads")]


def _markdown(result: dict) -> str:
    s, runs, r = result["setup"], result["runs"], result["ratios"]
    gib = 2**30
    lines = [
        "# QLoRA (nf4 base) vs LoRA over a bf16 base",
        "",
        f"Llama-3.2-1B-shaped, {s['layers']} blocks, LoRA r 16 on every projection; batch {s['batch']} x "
        f"{s['seq']} tokens; {s['threads']} threads, CPU ({s['machine']}, torch {s['torch']}).",
        "",
        "| base | model (GiB) | loaded RSS (GiB) | training peak (GiB) | loading peak (GiB) | step (s) "
        f"| survival check (s) | check / step | step at {s['shipped_batch']} x {s['seq']} (s) | check / that step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        run = runs[kind]
        lines.append(
            f"| {kind} | {run['model_bytes'] / gib:.3f} | {run['loaded_rss_bytes'] / gib:.3f} "
            f"| {run['step_peak_bytes'] / gib:.3f} | {run['load_peak_bytes'] / gib:.3f} | {run['step_s']:.2f} "
            f"| {run['check_s']:.2f} | {run['check_s'] / run['step_s']:.2f} | {run['shipped_step_s']:.2f} "
            f"| {run['check_s'] / run['shipped_step_s']:.2f} |"
        )
    lines += [
        "",
        "Memory is above the process's size after imports. A step is forward + backward + AdamW of the LM loss; "
        f"the last two columns time it at the shipped QLoRA config's batch ({s['shipped_batch']} sequences: 8 "
        "forget + 8 retain, whose NPO+GDR step also runs the reference forward, so its real step costs more). "
        "The check is the same in both: it does not depend on the batch.",
        "",
        f"QLoRA / bf16: loaded RSS {r['loaded_qlora_over_bf16']:.2f}, training peak "
        f"{r['step_peak_qlora_over_bf16']:.2f}, model bytes "
        f"{r['model_bytes_qlora_over_bf16']:.2f}, step time {r['step_time_qlora_over_bf16']:.2f}, survival check "
        f"{r['check_qlora_over_bf16']:.2f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
