"""Write ``configs/muse/{books,news}/*.yaml``: the papers' MUSE runs on Llama-2-7B, one file per row.

``python scripts/muse_configs.py`` rewrites them; ``--check`` only says whether the files on disk are
what this script writes (the test suite runs it). The settings live here once:

* full-parameter rows (``ga.yaml``, ``npo_gdr.yaml``, …) follow MUSE's code and P2 (Zhang et al., ICLR
  2025): AdamW lr 1e-5, 16 sequences of 2048 tokens per step, up to 10 epochs, retain weight 100 for GA
  and 0.1 for NPO; evaluated in the ``muse`` convention with the published AUC_retrain. 7B fp32 weights
  with AdamW need ~112 GB, so they shard over 4 GPUs with ``FSDP2Strategy``;
* LoRA rows (``*_lora.yaml``) follow P1 (Abitante et al.) where its code says: r / lora_alpha per row,
  lr 7e-4 and 5 epochs for BOOKS NPO+GDR, retain NLL weight 1.0 in its NPO+GDR rows; evaluated in the
  ``open-unlearning`` convention (P1's evaluator) with the retrain model's own AUC;
* QLoRA rows (``npo_gdr_qlora.yaml``) are the LoRA row over an nf4 base on one 24 GB GPU.

Every file checks survival (``QuantizationSurvival``, nf4 and fp4 every 25 optimizer steps: ~10 checks
in a run of ~250 steps) and writes checkpoints as safetensors (``SafetensorsCheckpointIO``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "muse"
CORPORA = {"books": ("Books", 0.5393), "news": ("News", 0.4772)}
METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")
#: MUSE's retain weights (P2): 100 with GA, 0.1 with NPO.
MUSE_RETAIN = {"ga_gdr": 100.0, "ga_klr": 100.0, "npo_gdr": 0.1, "npo_klr": 0.1}
#: P1's selected (r, lora_alpha) per row, from its released code (research notes in PAPER.md).
P1_RANK = {
    ("books", "ga_gdr"): (16, 16), ("books", "ga_klr"): (16, 16),
    ("books", "npo_gdr"): (64, 128), ("books", "npo_klr"): (16, 32),
    ("news", "ga_gdr"): (64, 64), ("news", "ga_klr"): (64, 64),
    ("news", "npo_gdr"): (16, 16), ("news", "npo_klr"): (64, 128),
}
SURVIVAL_EVERY = 25


@dataclass(frozen=True)
class Row:
    corpus: str
    method: str
    kind: str  # "full", "lora" or "qlora"

    @property
    def name(self) -> str:
        return self.method if self.kind == "full" else f"{self.method}_{self.kind}"

    @property
    def path(self) -> Path:
        return CONFIGS / self.corpus / f"{self.name}.yaml"

    @property
    def retain(self) -> bool:
        return self.method.endswith(("_gdr", "_klr"))


def _lora_settings(row: Row) -> tuple[int, int, float, int, float | None, list[str]]:
    """(r, alpha, lr, epochs, retain weight, what is known) of a LoRA or QLoRA row."""
    known = P1_RANK.get((row.corpus, row.method))
    notes = []
    if known is None:
        r, alpha = 32, 64
        notes.append("P1 reports no such row: r 32, alpha 64 (the middle of its grid), lr 1e-4.")
    else:
        r, alpha = known
        notes.append(f"r {r}, alpha {alpha}: P1's selection for this row.")
    lr, epochs = 1e-4, 10
    if (row.corpus, row.method) == ("books", "npo_gdr"):
        lr, epochs = 7e-4, 5
        notes.append("lr 7e-4, 5 epochs: P1's BOOKS NPO+GDR headline row (+7.93 4-bit utility).")
    elif known is not None:
        notes.append("lr and epochs of this row are not recoverable from P1 (it says lr ~1e-4): lr 1e-4, 10 epochs.")
    weight = MUSE_RETAIN.get(row.method)
    if row.method == "npo_gdr":
        weight = 1.0
        notes.append("Retain weight 1.0: P1's trainer keeps the retain NLL on at weight 1.0 in its NPO rows.")
    elif weight is not None:
        notes.append(f"Retain weight {weight:g}: MUSE's for this method (P1's is not recorded).")
    return r, alpha, lr, epochs, weight, notes


def _sci(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def render(row: Row) -> str:
    display, auc = CORPORA[row.corpus]
    out = f"outputs/muse/{row.corpus}/{row.name}"
    method_text = row.method.upper().replace("_", "+")
    target = f"muse-bench/MUSE-{display}_target"
    full = row.kind == "full"
    if full:
        lr, epochs, weight, accumulate, devices, batch = 1e-5, 10, MUSE_RETAIN.get(row.method), 1, 4, 4
        r = alpha = None
        about = [
            f"MUSE-{display}, {method_text}, full-parameter unlearning of Llama-2-7B ({target}) with the papers'",
            "settings (MUSE's code, P2): AdamW lr 1e-5 constant, weight decay 0, 16 sequences of 2048 tokens per",
            "step (4 per GPU on 4 GPUs), up to 10 epochs (P2: 5-10)"
            + (f"; retain weight {weight:g} on retain1." if weight is not None else "."),
            "fp32 weights + AdamW of a 7B model need ~112 GB: FSDP2Strategy shards weights, gradients and optimizer",
            "moments over the 4 GPUs (lit_unlearn.strategies; one process per GPU, started by the command above).",
            (
                f"Comparable with MUSE's and P2's tables: `muse` convention, published AUC_retrain ({auc}); "
                "`model.objective.npo_form`/`klr_form: logits` reproduce MUSE's released code. P2 sampled its VerbMem "
                "generations (temperature 0.9); this table decodes greedily, as MUSE's code does, so its VerbMem "
                "compares with P2's only roughly."
            ),
            "The survival check and the MUSE table run sharded too. Checkpoints hold the fp32 weights only (~27 GB,",
            "gathered on rank zero); set `save_weights_only: false` to resume exactly (weights and AdamW moments,",
            "~81 GB of host RAM on rank zero).",
        ]
    else:
        r, alpha, lr, epochs, weight, notes = _lora_settings(row)
        qlora = row.kind == "qlora"
        accumulate, devices, batch = (8, 1, 2) if qlora else (4, 1, 4)
        base = "loaded in bitsandbytes nf4 (bf16 compute; QLoRA on one 24 GB GPU)" if qlora else "frozen in bf16"
        about = [
            f"MUSE-{display}, {method_text} with {'QLoRA' if qlora else 'LoRA'} on Llama-2-7B ({target}): the base {base};",
            f"adapters r {r}, alpha {alpha}, dropout 0.05 on every linear projection; AdamW lr {_sci(lr)} constant,",
            f"{batch} x accumulate {accumulate} = 16 sequences of 2048 tokens per step, up to {epochs} epochs"
            + (", gradient checkpointing." if qlora else "."),
            *notes,
            "Comparable with P1's tables: `open-unlearning` convention (P1's evaluator), PrivLeak against the",
            "retrain row's own AUC." + (" P1 has no QLoRA rows: these have no published counterpart." if qlora else ""),
        ]
        if qlora:
            about += [
                "The deployment measured is peft's 4-bit merge: the adapter merged into the decoded nf4 base and",
                "re-quantized (QuantizationSurvival's nf4 row); export both deployments with",
                f"  lit-unlearn export {out}/version_0/adapter merged/",
            ]
    lines = [f"# lit-unlearn fit -c configs/muse/{row.corpus}/{row.name}.yaml", "#"]
    lines += [f"# {piece}" for text in about for piece in textwrap.wrap(text, 104)]
    lines += [
        "# QuantizationSurvival checks nf4 and fp4 every 25 optimizer steps; at fit end the model is evaluated as",
        "# deployed (full precision, LLM.int8, nf4, fp4) next to the target and retrain models: results.md/.csv/",
        f"# .json in {out}/version_*/.",
        "# Needs the Hugging Face Hub models muse-bench/* and meta-llama/Llama-2-7b-hf (gated: accept its licence).",
        "seed_everything: 0",
        "trainer:",
        "  accelerator: auto",
        f"  devices: {devices}",
    ]
    if full:
        lines += ["  strategy:", "    class_path: lit_unlearn.strategies.FSDP2Strategy"]
    lines += [
        "  precision: bf16-mixed",
        f"  max_epochs: {epochs}",
        f"  accumulate_grad_batches: {accumulate}",
        "  log_every_n_steps: 1",
        "  limit_val_batches: 0  # the MUSE table is made at fit end",
        f"  default_root_dir: {out}",
        "  logger:",
        "    class_path: lightning.pytorch.loggers.CSVLogger",
        "    init_args:",
        f"      save_dir: {out}",
        '      name: ""',
        "  plugins:  # checkpoints as safetensors: no pickle",
        "    - class_path: lit_unlearn.checkpoint_io.SafetensorsCheckpointIO",
        "  callbacks:",
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "      init_args:",
        "        save_last: true",
    ]
    if not full:
        lines += [
            "        save_top_k: -1  # the adapter of every epoch: pick the epoch as MUSE does",
            "        every_n_epochs: 1",
        ]
    lines += [
        "        save_weights_only: true",
        "    - class_path: lit_unlearn.callbacks.QuantizationSurvival",
        "      init_args:",
        f"        every_n_steps: {SURVIVAL_EVERY}",
        "        schemes: [nf4, fp4]",
        "    - class_path: lit_unlearn.callbacks.QuantizedEvaluation",
        "      init_args:",
        f"        data: muse-bench/MUSE-{display}",
        "        precisions: [full, int8, nf4, fp4]",
        f"        convention: {'muse' if full else 'open-unlearning'}",
    ]
    if full:
        lines.append(f"        auc_retrain: {row.corpus}")
    lines += [
        f"        references: {{target: {target}, retrain: muse-bench/MUSE-{display}_retrain}}",
        "        batch_size: 8",
        "model:",
        f"  model_name_or_path: {target}",
        "  tokenizer: meta-llama/Llama-2-7b-hf",
    ]
    if weight is None:
        lines.append(f"  objective: {{method: {row.method}}}")
    else:
        shown = f"{weight:g}" if weight != int(weight) else f"{weight:.1f}"
        lines.append(f"  objective: {{method: {row.method}, retain_weight: {shown}}}")
    lines.append("  dtype: bfloat16")
    if full:
        lines += ["  lora: null", f"  output_dir: {out}/model"]
    else:
        if row.kind == "qlora":
            lines += ["  four_bit: {quant_type: nf4, compute_dtype: bfloat16}",
                      "  gradient_checkpointing: true"]
        lines += ["  lora:", f"    r: {r}", f"    alpha: {alpha}", "    dropout: 0.05", "    target_modules: null"]
    lines += [
        "  optimizer:",
        "    class_path: torch.optim.AdamW",
        "    init_args:",
        f"      lr: {lr:.1e}".replace("e-0", "e-"),
        "      weight_decay: 0.0",
        "data:",
        f"  forget: {{path: muse-bench/MUSE-{display}, name: raw, split: forget}}",
    ]
    if row.retain:
        lines.append(f"  retain: {{path: muse-bench/MUSE-{display}, name: raw, split: retain1}}")
    lines += ["  max_length: 2048", "  packing: chunk", f"  batch_size: {batch}", ""]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def rows() -> list[Row]:
    out = []
    for corpus in CORPORA:
        for method in METHODS:
            out += [Row(corpus, method, "full"), Row(corpus, method, "lora")]
        out.append(Row(corpus, "npo_gdr", "qlora"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for row in rows():
        text = render(row)
        if row.path.is_file() and row.path.read_text(encoding="utf-8") == text:
            continue
        stale.append(row.path)
        if not args.check:
            row.path.parent.mkdir(parents=True, exist_ok=True)
            row.path.write_text(text, encoding="utf-8")
    extra = sorted(set(CONFIGS.rglob("*.yaml")) - {row.path for row in rows()})
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {_shown(path)}")
    for path in extra:
        print(f"not written by this script: {_shown(path)}")
    return 1 if args.check and (stale or extra) else 0


if __name__ == "__main__":
    sys.exit(main())
