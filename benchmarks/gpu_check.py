"""The GPU check: ``python benchmarks/gpu_check.py`` (one NVIDIA GPU, no downloads, <= 8 minutes on an H100/H200).

What only a GPU can show, measured in one run and written to ``benchmarks/results/gpu_check.json``/``.md``:

1. **Quantization, real vs fake.** bitsandbytes' nf4/fp4 (``quantize_4bit``, decoded by its CUDA kernel)
   and LLM.int8 (``int8_vectorwise_quant``) against lit-unlearn's fake quantization: codes, scales and
   dequantized values, bit for bit, on random weights and on every linear layer of the toy world's target;
   and fp4/nf4 codes on weights at every pivot of ``dQuantizeFP4``/``dQuantizeNF4`` (and an ulp either
   side), at ``±0`` and tiny values, where bitsandbytes' CPU path stores other fp4 codes than its CUDA
   kernel (``docs/bitsandbytes-cpu.md``): on a GPU lit-unlearn must equal the kernel there too.
2. **Evaluation, real vs fake.** The toy world's target evaluated MUSE-style through real bitsandbytes
   kernels (``quantizer="bitsandbytes"``: the merged model reloaded with ``BitsAndBytesConfig``) and
   through the fake path, metrics side by side, at int8, nf4 and fp4.
3. **Survival-check throughput.** One weight-space check (nf4 and fp4) of a stack of Llama-2-7B-shaped
   blocks in bf16 (full-parameter: snapshot ``W0``), in weights per second, against the device's copy
   bandwidth (``dst.copy_(src)`` of as many bytes, the floor of any pass reading every weight).
4. **Unlearning steps at 7B.** One LoRA NPO+GDR step of a 32-block 7B-shaped random Llama (bf16 base)
   and one full-parameter step of ``--full-layers`` blocks, each followed by a survival check: step and
   check time, peak device memory.

``--smoke`` runs every part at toy sizes (on the CPU when there is no GPU; the real-kernel evaluation
needs CUDA and is then reported as not run), so the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


# ---------------------------------------------------------------------- 1. quantization
# dQuantizeFP4's magnitude pivots; within _PIVOT_BAND of one, or below the first, bitsandbytes' CPU fp4
# may store another code than its CUDA kernel (and lit-unlearn).
_FP4_PIVOTS = (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333)
_PIVOT_BAND = 1e-6


def _codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:n]


def _fp4_agreed(weight: torch.Tensor) -> torch.Tensor:
    """Where bitsandbytes' CPU fp4 and its CUDA kernel store the same code (block 64)."""
    flat = weight.reshape(-1).float()
    pad = (-flat.numel()) % 64
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 64)
    x = (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)).reshape(-1)[: flat.numel()].abs()
    pivots = torch.tensor(_FP4_PIVOTS, device=x.device)
    return ((x[:, None] - pivots).abs().amin(dim=1) > _PIVOT_BAND) & (x > pivots[0] + _PIVOT_BAND)


def _compare_weight(weight: torch.Tensor) -> dict[str, bool]:
    """Real bitsandbytes against fake quantization of one weight, per format: codes, scales, values."""
    import bitsandbytes.functional as F

    from lit_unlearn.quantization import dequantize, quantize
    from lit_unlearn.quantization.bnb_decode import dequantize_4bit_as_cuda

    out = {}
    for quant_type in ("nf4", "fp4"):
        packed, state = F.quantize_4bit(weight, blocksize=64, quant_type=quant_type)
        if weight.is_cuda:
            real = F.dequantize_4bit(packed, state)  # the CUDA kernel a deployment runs
        else:
            # A CPU's decoder depends on the CPU (lit_unlearn.quantization.bnb_decode); the smoke run compares
            # with what the CUDA kernel computes from the same codes instead.
            real = dequantize_4bit_as_cuda(packed, state.absmax, quant_type, 64, weight.shape, weight.dtype)
        q = quantize(weight, quant_type, 64)
        ours_packed, ours_absmax = q.to_bitsandbytes()
        values = dequantize(q).to(real.device)
        # A CPU's fp4 is not the GPU's on the smallest weights and next to pivots: compared elsewhere only.
        agreed = _fp4_agreed(weight) if quant_type == "fp4" and not weight.is_cuda else slice(None)
        ours_codes, real_codes = _codes(ours_packed.to(packed.device), weight.numel()), _codes(packed, weight.numel())
        out[f"{quant_type}_codes"] = bool(torch.equal(ours_codes[agreed], real_codes[agreed]))
        out[f"{quant_type}_scales"] = bool(torch.equal(_bits(ours_absmax.to(state.absmax.device)), _bits(state.absmax)))
        ours_values, real_values = values.reshape(-1)[agreed], real.reshape(-1)[agreed]
        out[f"{quant_type}_values"] = bool(torch.equal(_bits(ours_values), _bits(real_values)))  # fp4's -0.0 included
    half = weight.to(torch.float16)
    cb, scb, _ = F.int8_vectorwise_quant(half)
    q = quantize(half, "int8")
    ours_cb, ours_scb = q.to_bitsandbytes()
    out["int8_codes"] = bool(torch.equal(ours_cb.to(cb.device), cb))
    out["int8_scales"] = bool(torch.equal(_bits(ours_scb.to(scb.device)), _bits(scb)))
    real = F.int8_vectorwise_dequant(cb, scb).to(torch.float16)
    out["int8_values"] = bool(torch.equal(_bits(dequantize(q).to(real.device)), _bits(real)))
    return out


def check_pivots() -> dict[str, Any]:
    """Codes of bitsandbytes' quantizer on this device against lit-unlearn's, on weights at every pivot of
    its CUDA kernels, one ulp either side, ±0 and tiny values (blocks of absmax 1, so ``x`` is ``w``).
    On a GPU every code must agree; on a CPU the fp4 count is bitsandbytes' CPU difference, reported."""
    import bitsandbytes.functional as F

    from lit_unlearn.quantization import quantize
    from lit_unlearn.quantization.bnb4 import levels_for

    device = _device()
    out: dict[str, Any] = {"device": device.type}
    for quant_type in ("nf4", "fp4"):
        edges = levels_for(quant_type, "cpu").midpoints
        pivots = torch.tensor(_FP4_PIVOTS) if quant_type == "fp4" else edges
        pivots = torch.cat([pivots, -pivots]) if quant_type == "fp4" else pivots
        points = torch.cat([pivots, edges])
        values = torch.cat([points, torch.nextafter(points, points + 1), torch.nextafter(points, points - 1),
                            torch.tensor([0.0, -0.0, 1e-4, -1e-4, 1e-30, -1e-30, 1e-40, -1e-40])])
        body = torch.zeros(-(values.numel() // -63) * 63)
        body[: values.numel()] = values
        blocks = torch.cat([torch.ones(body.numel() // 63, 1), body.view(-1, 63)], dim=1)
        weight = blocks.reshape(-1).to(device)
        packed, _ = F.quantize_4bit(weight, blocksize=64, quant_type=quant_type)
        ours, _ = quantize(weight, quant_type, 64).to_bitsandbytes()
        differ = int((_codes(ours.to(packed.device), weight.numel()) != _codes(packed, weight.numel())).sum())
        out[quant_type] = {"weights": weight.numel(), "codes_differ": differ}
    out["failures"] = [f"{qt}: {out[qt]['codes_differ']} codes" for qt in ("nf4", "fp4")
                       if out[qt]["codes_differ"] and (device.type == "cuda" or qt == "nf4")]
    return out


def check_quantization(model: torch.nn.Module, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    device = _device()
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, bool]] = {}
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            weight = (torch.randn(shape, generator=generator) * 0.02).to(device, dtype)
            results[f"random {shape[0]}x{shape[1]} {str(dtype).removeprefix('torch.')}"] = _compare_weight(weight)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings():
            results[f"world {name}"] = _compare_weight(module.weight.detach().to(device))
    failures = [f"{case}: {what}" for case, checks in results.items() for what, ok in checks.items() if not ok]
    return {"cases": len(results), "checks": sum(len(c) for c in results.values()), "failures": failures}


# ---------------------------------------------------------------------- 2. evaluation
def check_evaluation(model: torch.nn.Module, tokenizer: Any, data: Any, smoke: bool) -> dict[str, Any]:
    from lit_unlearn.evaluation import evaluate

    if not torch.cuda.is_available():
        return {"run": False, "why": "the real-kernel path needs CUDA"}
    settings = {"batch_size": 8, "progress": False, "auc_retrain": 0.5}
    if smoke:
        settings.update(verbmem_max_new_tokens=8, knowmem_max_new_tokens=4, max_items=4)
    rows = {}
    for precision in ("int8", "nf4", "fp4"):
        rows[precision] = {
            quantizer: evaluate(model, tokenizer, data, precision=precision, quantizer=quantizer, **settings)
            for quantizer in ("bitsandbytes", "fake")
        }
    return {"run": True, "rows": rows}


# ---------------------------------------------------------------------- 3. throughput
def check_throughput(layers: int, hidden: int, intermediate: int, repeats: int) -> dict[str, Any]:
    from lit_unlearn.survival.layers import prepare_references, select_linear_layers
    from lit_unlearn.quantization import get_scheme

    device = _device()
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList()
    for _ in range(layers):
        block = torch.nn.ModuleDict({
            name: torch.nn.Linear(i, o, bias=False) for name, (i, o) in {
                "q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
                "o_proj": (hidden, hidden), "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
                "down_proj": (intermediate, hidden)}.items()
        })
        blocks.append(block)
    blocks = blocks.to(device, torch.bfloat16)
    schemes = [get_scheme("nf4"), get_scheme("fp4")]
    watched = select_linear_layers(blocks, None)
    prepare_references(watched, schemes, {})
    with torch.no_grad():
        for layer in watched:
            layer.linear.weight.add_(torch.randn_like(layer.linear.weight) * 1e-3)
    weights = sum(layer.numel for layer in watched)

    def check() -> None:
        for layer in watched:
            layer.survival(schemes)

    check()  # warm-up (compiles kernels on first use)
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check()
        _sync()
        times.append(time.perf_counter() - start)
    src = torch.empty(weights, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    copies = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        dst.copy_(src)
        _sync()
        copies.append(time.perf_counter() - start)
    check_s, copy_s = min(times), min(copies[1:])
    return {
        "weights": weights, "check_s": check_s, "weights_per_s": weights / check_s,
        "copy_s": copy_s, "copy_gb_per_s": 2 * src.numel() * src.element_size() / copy_s / 1e9,
        "check_over_copy": check_s / copy_s,
    }


# ---------------------------------------------------------------------- 4. steps at 7B
def _llama(directory: Path, layers: int, hidden: int, intermediate: int, heads: int, vocab: int) -> None:
    """A random bf16 Llama of this shape, and a word-level tokenizer, saved as a model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(std=0.02)
    model.save_pretrained(directory)
    vocabulary = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    raw = Tokenizer(models.WordLevel(vocabulary, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        directory
    )


def check_step(directory: Path, lora: bool, seq: int) -> dict[str, Any]:
    """Two NPO+GDR steps (the second timed) and one survival check of ``UnlearningModule``'s model."""
    from lit_unlearn import LoRA, UnlearningModule
    from lit_unlearn.survival.layers import delta_buffer, prepare_references, select_linear_layers
    from lit_unlearn.quantization import get_scheme

    device = _device()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    module = UnlearningModule(str(directory), objective="npo_gdr", lora=LoRA(r=16, alpha=32.0) if lora else None,
                              dtype="bfloat16")
    module.configure_model()  # LoRA: the reference is the adapter-disabled base; full: a frozen bf16 copy
    module.to(device)
    model, objective = module.model, module.objective
    schemes = [get_scheme("nf4"), get_scheme("fp4")]
    watched = select_linear_layers(model, None)
    prepare_references(watched, schemes, {})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, model.config.vocab_size, (1, seq), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = objective(
                module._forward(model, batch), batch["labels"],
                retain_logits=module._forward(model, batch), retain_labels=batch["labels"],
                forget_ref_logits=module._reference_logits(batch),
            )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    buffer = delta_buffer(watched)
    for layer in watched:
        if layer.quantized and layer.source != "frozen":
            layer.survival(schemes, buffer)
    _sync()
    check_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    config = model.get_base_model().config if lora else model.config
    return {"layers": config.num_hidden_layers, "step_s": times[-1], "check_s": check_s,
            "peak_gib": None if peak is None else peak / 2**30}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part at toy sizes (runs without a GPU)")
    parser.add_argument("--world-size", default="test", help="toy world size for parts 1-2 (default: test)")
    parser.add_argument("--full-layers", type=int, default=8, help="blocks of the full-parameter 7B-shaped step")
    parser.add_argument("--out", default=str(RESULTS), help="directory for gpu_check.json and .md")
    args = parser.parse_args(argv)
    os.environ.setdefault("LIT_UNLEARN_WORLD_SIZE", args.world_size)
    from lit_unlearn._logging import silence_bitsandbytes

    silence_bitsandbytes()
    started = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_unlearn.data.sources import resolve_path
    from lit_unlearn.evaluation import EvalData

    target = resolve_path("world:target")
    world = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).to(_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})",
        "torch": torch.__version__, "smoke": args.smoke,
    }
    import bitsandbytes

    report["bitsandbytes"] = bitsandbytes.__version__
    shapes = [(64, 96), (256, 512)] if args.smoke else [(64, 96), (4096, 4096), (11008, 4096)]
    report["quantization"] = check_quantization(world, shapes)
    report["pivots"] = check_pivots()
    report["evaluation"] = check_evaluation(world, tokenizer, EvalData.load("world:data"), args.smoke)
    del world
    if args.smoke:
        report["throughput"] = check_throughput(layers=1, hidden=128, intermediate=256, repeats=2)
    else:
        report["throughput"] = check_throughput(layers=4, hidden=4096, intermediate=11008, repeats=3)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        shape = (2, 128, 256, 4, 512) if args.smoke else (32, 4096, 11008, 32, 32000)
        lora_dir, full_dir = Path(tmp) / "lora", Path(tmp) / "full"
        _llama(lora_dir, *shape)
        report["lora_step"] = check_step(lora_dir, lora=True, seq=64 if args.smoke else 2048)
        layers = 1 if args.smoke else args.full_layers
        _llama(full_dir, layers, *shape[1:])
        report["full_step"] = check_step(full_dir, lora=False, seq=64 if args.smoke else 2048)
    report["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(_markdown(report))
    print(_markdown(report))
    return report


def _markdown(r: dict[str, Any]) -> str:
    q, e, t = r["quantization"], r["evaluation"], r["throughput"]
    lines = [
        f"# GPU check on {r['device']} (torch {r['torch']}, bitsandbytes {r['bitsandbytes']})"
        + (" — smoke run" if r["smoke"] else ""),
        "",
        f"1. Quantization, real bitsandbytes vs fake: {q['checks']} checks on {q['cases']} weights, "
        + ("**all bit-identical**." if not q["failures"] else f"**{len(q['failures'])} differ**: {q['failures'][:5]}"),
    ]
    p = r["pivots"]
    lines.append(
        f"   At the kernels' pivots ±1 ulp, ±0 and tiny values ({p['device']} quantizer): nf4 "
        f"{p['nf4']['codes_differ']} of {p['nf4']['weights']} codes differ, fp4 {p['fp4']['codes_differ']} of "
        f"{p['fp4']['weights']}" + ("" if p["device"] == "cuda" else " (bitsandbytes' CPU rule, not a GPU's)")
        + (f"; **failures**: {p['failures']}." if p["failures"] else ".")
    )
    if e["run"]:
        lines += ["2. Evaluation on the toy world's target, bitsandbytes vs fake:", "",
                  "| precision | quantizer | VerbMem | KnowMem | PrivLeak |", "|---|---|---:|---:|---:|"]
        for precision, by in e["rows"].items():
            for quantizer, row in by.items():
                lines.append(f"| {precision} | {quantizer} | {row.get('verbmem_forget', float('nan')):.2f} | "
                             f"{row.get('knowmem_forget', float('nan')):.2f} | {row.get('privleak', float('nan')):.2f} |")
        lines.append("")
    else:
        lines.append(f"2. Evaluation through real kernels: not run ({e['why']}).")
    lines.append(
        f"3. Survival check: {t['weights'] / 1e6:.0f}M bf16 weights (nf4 + fp4) in {t['check_s']:.3f} s = "
        f"{t['weights_per_s'] / 1e9:.2f}G weights/s; a copy of as many bytes takes {t['copy_s'] * 1e3:.2f} ms "
        f"({t['copy_gb_per_s']:.0f} GB/s): the check costs {t['check_over_copy']:.1f} copies."
    )
    for name in ("lora_step", "full_step"):
        s = r[name]
        peak = "" if s["peak_gib"] is None else f", peak {s['peak_gib']:.1f} GiB"
        lines.append(f"4. {name.replace('_', ' ')} ({s['layers']} blocks): step {s['step_s']:.2f} s, survival check "
                     f"{s['check_s']:.2f} s{peak}.")
    lines += ["", f"Wall time {r['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
