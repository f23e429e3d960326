"""What rounding the merge to a bf16 base changes: a trained adapter's MUSE rows, merged two ways.

    python scripts/bf16_merge_effect.py outputs/lora/simnpo_gdr/version_0/adapter

The adapter is loaded on its base in bf16 (as every MUSE config loads Llama-2-7B) and evaluated at full
precision and at each scheme, once with the merge deployment does (``W0 + ΔW`` rounded once to bf16, as
peft's ``merge_and_unload`` stores it, then quantized) and once quantizing the float32 sum, which skips that
rounding. The difference between the two tables is what the bf16 copy alone erases. Writes
``<adapter>/../bf16_merge_effect.md`` and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from lit_unlearn.evaluation import evaluate

METRICS = (("verbmem_forget", "VerbMem"), ("knowmem_forget", "KnowMem"), ("knowmem_retain", "utility"))


@contextlib.contextmanager
def float32_sum() -> Iterator[None]:
    """The merge without its rounding: ``W0 + ΔW`` kept in float32 for the quantizer."""
    import lit_unlearn.deployment.layers as layers

    real = layers.merge
    layers.merge = lambda w0, delta, out=None: w0.float() + delta.float()
    try:
        yield
    finally:
        layers.merge = real


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--precisions", nargs="+", default=["full", "int8", "nf4", "fp4"])
    parser.add_argument("--data", default="world:data")
    args = parser.parse_args(argv)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_unlearn.data import resolve_path

    config = json.loads((args.adapter / "adapter_config.json").read_text())
    base = resolve_path(config["base_model_name_or_path"])  # `world:target` is the toy world's model
    tokenizer = AutoTokenizer.from_pretrained(args.adapter if (args.adapter / "tokenizer.json").is_file() else base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, args.adapter).eval()
    rows = []
    for precision in args.precisions:
        for how, context in (("bf16 merge", contextlib.nullcontext), ("float32 sum", float32_sum)):
            with context():
                result = evaluate(model, tokenizer, args.data, precision, progress=False)
            rows.append((precision, how, *(result[key] for key, _ in METRICS)))
            print(rows[-1], flush=True)
    lines = ["| precision | merge | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    lines += [f"| {p} | {how} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for p, how, *values in rows]
    table = "\n".join(lines) + "\n"
    (args.adapter.parent / "bf16_merge_effect.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
