"""Benchmark preparing the embedded toy world: ``python benchmarks/bench_world.py``.

Measured in one run:

* the wall-clock time of ``prepare_world(size)`` into a fresh cache directory (corpus, tokenizer,
  retrain and target training, recall probe, manifest), by stage, against the 5-minute budget for the
  default size on two CPU cores; and the time of the cached second call (verify hashes, return);
* the recall table of target vs retrain, forget vs retain, at fp32 / int8 (LLM.int8) / nf4 / fp4 (block
  64) / int4 (symmetric RTN, group 128), with each 4-bit value as a share of fp32;
* why fp32: a few training steps of the default recipe's model in fp32 against bf16 autocast, same
  batch, same threads, side by side.

Machine load (``os.getloadavg``) is recorded before and after, since the CPUs may be shared.
Writes ``benchmarks/results/world.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lit_unlearn.world import get_size, prepare_world

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_S = 300.0
METRICS = ("qa_exact", "verbatim_token_acc")


def autocast_steps(size: str, steps: int) -> dict[str, float]:
    """Seconds per training step of the size's model, fp32 vs bf16 autocast, on one packed batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = get_size(size).recipe
    config = LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        tie_word_embeddings=False,
    )
    ids = torch.randint(0, recipe.vocab_size, (recipe.batch_size, recipe.seq_len))
    out = {}
    for name, enabled in (("fp32", False), ("bf16_autocast", True)):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        out[f"{name}_s_per_step"] = round(min(times[1:]), 4)
    out["bf16_over_fp32"] = round(out["bf16_autocast_s_per_step"] / out["fp32_s_per_step"], 2)
    return out


def table(recall: dict) -> list[str]:
    rows = [
        "| model | precision | forget QA exact | retain QA exact | forget verbatim tok-acc | retain verbatim tok-acc |",
        "|---|---|---|---|---|---|",
    ]
    for model, by_scheme in recall.items():
        for scheme, r in by_scheme.items():
            cells = [f"{r[split][m]:.3f}" for m in METRICS for split in ("forget", "retain")]
            cells = [cells[0], cells[1], cells[2], cells[3]]
            rows.append(f"| {model} | {scheme} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--autocast-steps", type=int, default=3, help="steps per precision in the bf16 check; 0 skips"
    )
    parser.add_argument("--out", default=str(RESULTS / "world"), help="results path without suffix")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-world-") as cache:
        start = time.perf_counter()
        world = prepare_world(size=args.size, seed=args.seed, cache_dir=cache, progress=True)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        prepare_world(size=args.size, seed=args.seed, cache_dir=cache, progress=False)
        cached_s = time.perf_counter() - start
        manifest = world.manifest
    load_after = os.getloadavg()
    autocast = autocast_steps(args.size, args.autocast_steps) if args.autocast_steps else None

    recall = manifest["recall"]
    survival = {
        f"{model}/{split}/{metric}": {
            scheme: round(
                recall[model][scheme][split][metric] / max(recall[model]["fp32"][split][metric], 1e-9), 3
            )
            for scheme in ("int8", "nf4", "fp4", "int4")
        }
        for model in ("target",)
        for split in ("forget", "retain")
        for metric in METRICS
    }
    results = {
        "size": args.size,
        "seed": args.seed,
        "prepare_s": round(prepare_s, 1),
        "budget_s": BUDGET_S,
        "prepare_over_budget": round(prepare_s / BUDGET_S, 3),
        "cached_call_s": round(cached_s, 3),
        "timings": manifest["timings"],
        "recipe": manifest["size"]["recipe"],
        "entities": {k: manifest["size"][k] for k in ("forget", "retain1", "retain2", "holdout")},
        "counts": manifest["counts"],
        "training": manifest["training"],
        "recall": recall,
        "quantized_over_fp32_target": survival,
        "autocast": autocast,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "build_threads": manifest["machine"]["build_threads"],
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    t = manifest["timings"]
    lines = [
        f"# Toy world preparation (size `{args.size}`, seed {args.seed})",
        "",
        (
            f"Generated by `python benchmarks/bench_world.py` on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; the build ran on {manifest['machine']['build_threads']} torch thread(s) "
            f"(the idle CPUs at its start); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
            "(the CPUs are shared with other work)."
        ),
        "",
        (
            f"**Prepare: {prepare_s:.0f} s** = {prepare_s / BUDGET_S:.2f}x the {BUDGET_S:.0f} s budget "
            f"(corpus {t['corpus_s']:.1f} s, tokenizer {t['tokenizer_s']:.1f} s, retrain {t['retrain_s']:.0f} s, "
            f"target {t['target_s']:.0f} s, probe {t['probe_s']:.0f} s). Cached second call: {cached_s:.2f} s."
        ),
        "",
        (
            f"Model: Llama, hidden {results['recipe']['hidden_size']}, {results['recipe']['num_layers']} layers, "
            f"vocab {results['recipe']['vocab_size']}, {manifest['training']['parameters'] / 1e6:.2f} M parameters. "
            f"Entities per split: {results['entities']}. "
            f"Forget QA: {manifest['counts']['knowmem']['forget_qa']}, retain QA: "
            f"{manifest['counts']['knowmem']['retain_qa']}, verbmem prompts: {manifest['counts']['verbmem']['forget']}."
        ),
        "",
        (
            "## Recall (greedy; QA exact match with MUSE's 10-shot prompt; verbatim = token accuracy of the "
            "continuation)"
        ),
        "",
        *table(recall),
        "",
        "## Target recall after quantization, as a share of fp32",
        "",
        "| set | int8 | nf4 | fp4 | int4 |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | " + " | ".join(f"{v[s]:.3f}" for s in ("int8", "nf4", "fp4", "int4")) + " |"
            for k, v in survival.items()
        ],
    ]
    if autocast:
        lines += [
            "",
            "## fp32 vs bf16 autocast (one training step, default recipe batch)",
            "",
            (
                f"fp32 {autocast['fp32_s_per_step']:.3f} s/step, bf16 autocast {autocast['bf16_autocast_s_per_step']:.3f} "
                f"s/step: bf16 is {autocast['bf16_over_fp32']:.1f}x the fp32 time, so the world trains in fp32."
            ),
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
