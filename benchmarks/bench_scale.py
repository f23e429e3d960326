"""Memory and overhead at scale: ``python benchmarks/bench_scale.py``.

Measured side by side in one run on a stack of Llama-3.2-1B-shaped blocks (hidden 2048, intermediate
8192, 32 heads, 8 KV heads; ``--layers`` of the 16, random weights, a 2048-token vocabulary), bf16 base,
each configuration in its own child process so that none's memory counts against another's:

* **the reference costs no copy**: peak memory (Linux's ``VmHWM`` above the process's size after imports)
  of a fit of ``--steps`` LoRA NPO+KLR steps against the same fit with GA, whose objective reads no
  reference (goal <= 1.15: NPO's reference is the adapter-disabled base), and against GA+GDR, which
  also backpropagates through a retain batch but reads no reference (what the reference alone costs);
  full-parameter NPO+KLR against full-parameter GA for contrast (there the reference is a frozen copy);
* **Lightning adds nothing to a step**: the median step time of ``UnlearningModule`` under ``Trainer``
  against a bare PyTorch loop of the same maths (the same module's forward, reference, objective,
  backward and AdamW; goal <= 1.05);
* **sharded checks hold one layer**: under 2-process FSDP2 (gloo), the extra peak memory per rank of one
  weight-space survival check (nf4 and fp4, every layer) and of one forward of the nf4-deployed model (what
  an evaluation batch costs), each against the largest layer's bytes.

Writes ``benchmarks/results/scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SEQ = 128


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def _save_base(directory: Path, layers: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 2048)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(directory)


def _batches(n: int, batch: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        def split() -> dict:
            ids = torch.randint(3, 2048, (batch, SEQ), generator=generator)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

        out.append({"forget": split(), "retain": split()})
    return out


class _Batches(torch.utils.data.Dataset):
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _module(base: str, objective: str, lora: bool):
    from lit_unlearn import LoRA, UnlearningModule

    return UnlearningModule(base, objective=objective, lora=LoRA(r=16, alpha=32.0, dropout=0.0) if lora else None,
                            dtype="bfloat16", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5),
                            output_dir=tempfile.mkdtemp(prefix="bench-scale-out-"))


def _trainer_fit(base: str, objective: str, lora: bool, args: argparse.Namespace) -> dict:
    """A Trainer fit of ``args.steps`` steps; peak memory above the baseline and each step's wall time."""
    from lightning.pytorch import Callback, Trainer

    times: list[float] = []

    class Clock(Callback):
        def on_train_batch_start(self, *a) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *a) -> None:
            times.append(time.perf_counter() - self.start)

    baseline = _vm("VmRSS")
    _reset_peak()
    module = _module(base, objective, lora)
    loader = torch.utils.data.DataLoader(_Batches(_batches(args.steps, args.batch)), batch_size=None)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
    trainer.fit(module, loader)
    return {"peak_bytes": _vm("VmHWM") - baseline, "step_s": statistics.median(times[1:])}


def _bare_loop(base: str, objective: str, lora: bool, args: argparse.Namespace) -> dict:
    """The same maths as ``UnlearningModule.training_step`` without Lightning: forward, reference,
    objective, backward, AdamW."""
    module = _module(base, objective, lora)
    module.configure_model()
    model, obj = module.model, module.objective
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for batch in _batches(args.steps, args.batch):
        start = time.perf_counter()
        forget, retain = batch["forget"], batch["retain"]
        forget_logits = module._forward(model, forget)
        forget_ref = module._reference_logits(forget) if obj.forget.needs_reference else None
        retain_logits = module._forward(model, retain) if obj.retain is not None else None
        retain_ref = module._reference_logits(retain) if obj.retain is not None and obj.retain.needs_reference else None
        out = obj(forget_logits, forget["labels"], retain_logits=retain_logits,
                  retain_labels=retain["labels"] if obj.retain is not None else None,
                  forget_ref_logits=forget_ref, retain_ref_logits=retain_ref)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:])}


def _sharded(rank: int, world: int, port: int, base: str, out: str) -> None:
    """One rank of the 2-process FSDP2 measurement (spawned)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM

    from lit_unlearn.survival.layers import prepare_references, select_linear_layers
    from lit_unlearn.deployment import deployed_weights
    from lit_unlearn.quantization import get_scheme
    from lit_unlearn.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    largest = max(m.weight.numel() * m.weight.element_size() for m in model.modules()
                  if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings())
    model.requires_grad_(True)
    shard_model(model, mesh, reshard_after_forward=True)
    schemes = [get_scheme("nf4"), get_scheme("fp4")]
    layers = select_linear_layers(model, None)
    prepare_references(layers, schemes, {})
    with torch.no_grad():
        for layer in layers:  # a small update, so every layer has one to measure
            local = layer.linear.weight.to_local()
            local.add_(torch.randn_like(local) * 1e-3)
    dist.barrier()
    before = _vm("VmRSS")
    _reset_peak()
    for layer in layers:
        layer.survival(schemes)
    check = _vm("VmHWM") - before
    dist.barrier()
    ids = torch.randint(3, 2048, (2, SEQ))
    with torch.no_grad():
        model(input_ids=ids)  # the plain forward's own peak, for contrast
        before = _vm("VmRSS")
        _reset_peak()
        model(input_ids=ids)
        plain = _vm("VmHWM") - before
        with deployed_weights(model, "nf4") as deployed:
            before = _vm("VmRSS")
            _reset_peak()
            deployed(input_ids=ids)
            evaluation = _vm("VmHWM") - before
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"largest_layer_bytes": largest, "check_bytes": check, "forward_bytes": plain, "nf4_forward_bytes": evaluation}
    ))
    dist.destroy_process_group()


def _child(args: argparse.Namespace) -> dict:
    from lit_unlearn._logging import silence_bitsandbytes

    silence_bitsandbytes()
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401  (imported before the baseline in every child)
    import peft  # noqa: F401

    lora = args.kind != "full"
    if args.child == "fit":
        return _trainer_fit(args.base, args.objective, lora, args)
    return _bare_loop(args.base, args.objective, lora, args)


def _run_child(args: argparse.Namespace, child: str, objective: str, kind: str, base: str) -> dict:
    command = [sys.executable, __file__, "--child", child, "--objective", objective, "--kind", kind, "--base", base,
               f"--layers={args.layers}", f"--batch={args.batch}", f"--steps={args.steps}", f"--threads={args.threads}"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder blocks of the 16 of Llama-3.2-1B")
    parser.add_argument("--batch", type=int, default=2, help="forget and retain sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="training steps; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("fit", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = str(Path(tmp) / "base")
        _save_base(Path(base), args.layers)
        memory = {f"{kind}/{objective}": _run_child(args, "fit", objective, kind, base)
                  for kind in ("lora", "full") for objective in ("npo_klr", "ga", "ga_gdr")
                  if kind == "lora" or objective != "ga_gdr"}
        timing = {"trainer": memory["lora/npo_klr"]["step_s"],
                  "bare": _run_child(args, "bare", "npo_klr", "lora", base)["step_s"]}
        timing["trainer_again"] = _run_child(args, "fit", "npo_klr", "lora", base)["step_s"]
        out = Path(tmp) / "sharded"
        out.mkdir()
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_sharded, args=(2, port, base, str(out)), nprocs=2, start_method="spawn")
        sharded = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    largest = sharded[0]["largest_layer_bytes"]
    ratios = {
        "lora_npo_klr_over_ga_peak": memory["lora/npo_klr"]["peak_bytes"] / memory["lora/ga"]["peak_bytes"],
        "lora_npo_klr_over_ga_gdr_peak": memory["lora/npo_klr"]["peak_bytes"] / memory["lora/ga_gdr"]["peak_bytes"],
        "full_npo_klr_over_ga_peak": memory["full/npo_klr"]["peak_bytes"] / memory["full/ga"]["peak_bytes"],
        "trainer_over_bare_step": min(timing["trainer"], timing["trainer_again"]) / timing["bare"],
        "sharded_check_over_largest_layer": max(r["check_bytes"] for r in sharded) / largest,
        "sharded_nf4_forward_over_largest_layer": max(r["nf4_forward_bytes"] for r in sharded) / largest,
        "sharded_plain_forward_over_largest_layer": max(r["forward_bytes"] for r in sharded) / largest,
        "sharded_nf4_forward_over_plain_forward": max(r["nf4_forward_bytes"] / r["forward_bytes"] for r in sharded),
    }
    result = {
        "setup": {k: v for k, v in vars(args).items() if k not in ("child", "objective", "kind", "base")}
        | {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "memory": memory, "timing": timing, "sharded": sharded, "ratios": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(result: dict) -> str:
    s, m, t, r = result["setup"], result["memory"], result["timing"], result["ratios"]
    gib = 2**30
    lines = [
        "# Memory and overhead at scale",
        "",
        f"Llama-3.2-1B-shaped, {s['layers']} blocks, bf16 base; {s['batch']} forget + {s['batch']} retain sequences "
        f"of {SEQ} tokens per step; {s['threads']} threads, CPU ({s['machine']}, torch {s['torch']}).",
        "",
        "| fit | peak memory above imports (GiB) | median step (s) |",
        "|---|---:|---:|",
        *[f"| {name} | {v['peak_bytes'] / gib:.3f} | {v['step_s']:.3f} |" for name, v in m.items()],
        "",
        f"- LoRA NPO+KLR / LoRA GA peak memory: **{r['lora_npo_klr_over_ga_peak']:.3f}** (goal <= 1.15; the reference "
        "is the adapter-disabled base; NPO+KLR also backpropagates through a retain batch, which GA has not). "
        f"Against GA+GDR, the same batches without a reference: **{r['lora_npo_klr_over_ga_gdr_peak']:.3f}**.",
        f"- Full-parameter NPO+KLR / GA peak memory: {r['full_npo_klr_over_ga_peak']:.3f} (a frozen reference copy).",
        f"- Step time under Trainer / bare loop: **{r['trainer_over_bare_step']:.3f}** (goal <= 1.05; Trainer "
        f"{t['trainer']:.3f} s and {t['trainer_again']:.3f} s in two runs, bare {t['bare']:.3f} s).",
        f"- 2-process FSDP2, per rank, extra peak memory against the largest layer "
        f"({result['sharded'][0]['largest_layer_bytes'] / 2**20:.0f} MiB in fp32): survival check (nf4 + fp4, every "
        f"layer) **{r['sharded_check_over_largest_layer']:.2f}x**, one forward of the nf4-deployed model "
        f"**{r['sharded_nf4_forward_over_largest_layer']:.2f}x** (a plain forward: "
        f"{r['sharded_plain_forward_over_largest_layer']:.2f}x, activations and logits): the deployed forward's "
        f"peak is {r['sharded_nf4_forward_over_plain_forward']:.2f}x the plain one's.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
