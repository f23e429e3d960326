"""Write configs/<method>.yaml (LoRA) and configs/full/<method>.yaml (full-parameter) for the toy world.

The YAMLs are the source of truth users read and edit; this script only keeps the family consistent:
    python scripts/write_configs.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "configs"

METHODS = {
    # method: (what it is, retain weight or None, paper note)
    "ga": ("Gradient ascent on the forget set", None, "GA alone has no retain term and collapses utility (MUSE)."),
    "ga_gdr": ("Gradient ascent + gradient descent on retain (GDR)", 100.0, "Paper: alpha = 100 for GA+GDR."),
    "ga_klr": ("Gradient ascent + KL to the reference on retain (KLR)", 100.0, "Paper: alpha = 100 for GA+KLR."),
    "npo": ("Negative preference optimization (NPO, beta 0.1)", None, "NPO's loss starts at (2/beta) ln 2 = 13.86."),
    "npo_gdr": ("NPO + gradient descent on retain (GDR)", 0.1, "Paper: alpha = 0.1 for NPO+GDR."),
    "npo_klr": ("NPO + KL to the reference on retain (KLR)", 0.1, "Paper: alpha = 0.1 for NPO+KLR."),
    "simnpo": ("SimNPO: reference-free, length-normalised NPO", None, "SimNPO (Fan et al. 2024), beta 2.5, delta 0."),
    "simnpo_gdr": ("SimNPO + gradient descent on retain (GDR)", 0.1, "SimNPO's MUSE runs use retain weight 0.1."),
}

# Toy-world settings, tuned on the default world (docs/tuning.md, scripts/tune_toy_world.py).
LORA = {"lr": 1.0e-3, "r": 16, "alpha": 32, "max_steps": 60}
FULL = {"lr": 5.0e-4, "max_steps": 60}


def render(method: str, full: bool) -> str:
    what, retain_weight, note = METHODS[method]
    rel = f"configs/full/{method}.yaml" if full else f"configs/{method}.yaml"
    out = "full" if full else "lora"
    regime = (
        "Full-parameter unlearning with the papers' optimizer: AdamW, constant schedule, weight decay 0 (MUSE/P2:\n"
        "# lr 1e-5, effective batch 16, 2048-token chunks, 5-10 epochs on Llama-2-7B). At lr 1e-5 the 0.7M-parameter\n"
        "# toy model does not move in 300 steps, at 1e-4 it needs 300 or more (docs/tuning.md), so these use 5e-4;\n"
        "# the papers' lr is one override away: --model.optimizer.init_args.lr 1e-5."
        if full
        else "LoRA unlearning in P1's regime: adapters on every linear projection (q,k,v,o,gate,up,down),\n"
        "# rank 16-64, alpha r/2..2r, dropout 0.05, AdamW, constant lr 1e-4..7e-4 on Llama-2-7B. The toy\n"
        "# model is 3 orders of magnitude smaller, so it takes a larger lr to unlearn in a few minutes."
    )
    lines = [
        f"# lit-unlearn fit -c {rel}",
        "#",
        f"# {what} on the embedded toy world (prepared and cached on first use).",
        f"# {regime}",
        f"# {note}",
        "# Survival of the update under nf4/fp4 is logged every 10 steps; at the end the model is evaluated",
        "# MUSE-style at full precision, 8-bit and 4-bit: lit-unlearn test -c " + rel + " --ckpt_path last",
        "seed_everything: 0",
        "trainer:",
        "  accelerator: auto",
        "  devices: 1",
        f"  max_steps: {FULL['max_steps'] if full else LORA['max_steps']}",
        "  log_every_n_steps: 5",
        f"  default_root_dir: outputs/{out}/{method}",
        "  logger:",
        "    class_path: lightning.pytorch.loggers.CSVLogger",
        "    init_args:",
        f"      save_dir: outputs/{out}/{method}",
        '      name: ""',
        "  plugins:  # checkpoints as safetensors: no pickle, resumable",
        "    - class_path: lit_unlearn.checkpoint_io.SafetensorsCheckpointIO",
        "  callbacks:",
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "      init_args:",
        "        save_last: true",
        "    - class_path: lit_unlearn.callbacks.QuantizationSurvival",
        "      init_args:",
        "        every_n_steps: 10",
        "        schemes: [nf4, fp4]",
        "    - class_path: lit_unlearn.callbacks.QuantizedEvaluation",
        "      init_args:",
        "        data: world:data",
        "        precisions: [full, int8, nf4, fp4]",
        "        references: {target: world:target, retrain: world:retrain}",
        "model:",
        "  model_name_or_path: world:target",
        f"  objective: {{method: {method}}}" if retain_weight is None
        else f"  objective: {{method: {method}, retain_weight: {retain_weight}}}",
    ]
    if full:
        lines.append("  lora: null")
    else:
        lines += ["  lora:", f"    r: {LORA['r']}", f"    alpha: {LORA['alpha']}", "    dropout: 0.05"]
    lines += [
        "  optimizer:",
        "    class_path: torch.optim.AdamW",
        "    init_args:",
        f"      lr: {FULL['lr'] if full else LORA['lr']}",
        "      weight_decay: 0.0",
        "data:",
        "  forget: {path: world:data, name: raw, split: forget}",
    ]
    if retain_weight is not None:
        lines.append("  retain: {path: world:data, name: raw, split: retain1}")
    else:
        lines.append("  retain: null")
    lines += ["  max_length: 128", "  batch_size: 8", ""]
    return "\n".join(lines)


def main() -> None:
    (ROOT / "full").mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        (ROOT / f"{method}.yaml").write_text(render(method, full=False))
        (ROOT / "full" / f"{method}.yaml").write_text(render(method, full=True))


if __name__ == "__main__":
    main()
