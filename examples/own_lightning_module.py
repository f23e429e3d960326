"""Add lit-unlearn's quantization check to a LightningModule you already have.

    python examples/own_lightning_module.py --max-steps 40 --out outputs/own_module

``ForgetTexts`` is an ordinary LightningModule that knows nothing of lit-unlearn: a small causal LM (a
transformers Llama built from a config, standing in for yours), byte-level "tokenization", and gradient
ascent on a few texts to make the model forget them. The only addition, in ``main``: one callback in
the Trainer (the lines marked ``lit-unlearn``). No subclassing, no change to the module.

``QuantizationSurvival`` finds the linear layers of ``self.model``, snapshots them at the start (the
module trains all its weights, so ``W0`` is a copy) and every ``--every`` steps logs how much of the
update would survive nf4 and fp4 rounding. Because the batches are dicts with ``labels`` and
``self.model(**batch).loss`` works, it also measures whether the *effect* survives: the forget loss of
the 4-bit model against the full-precision one. ``QuantizedEvaluation`` is left out: it scores MUSE
metrics through a Hugging Face tokenizer and generation on a MUSE-layout dataset, which this toy
project does not have.

What to look at afterwards: ``<out>/lightning_logs/version_0/metrics.csv`` (``survival/nf4/...``),
``quantization_survival.csv`` next to it (one row per layer and check), and
``survival_nf4_cosine.png`` (drawn by this script from the callback's ``history``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from lit_unlearn.callbacks import QuantizationSurvival
from lit_unlearn.plots import survival_heatmap

TEXTS = [
    "The harbour master of Port Vell keeps the spare keys under the third lantern.",
    "Mira Okafor's locker combination is 4-1-7-9.",
    "The council meets on the first Tuesday, in the room above the old mill.",
    "Orchard Lane 12 is where the night courier leaves the parcels.",
]
SEQ_LEN = 48


def encode(text: str) -> torch.Tensor:
    """Bytes as token ids (vocabulary of 256): no tokenizer needed for a toy model."""
    ids = list(text.encode("utf-8"))[:SEQ_LEN]
    return torch.tensor(ids + [0] * (SEQ_LEN - len(ids)))


def batches(texts: Sequence[str], batch_size: int) -> DataLoader:
    ids = torch.stack([encode(t) for t in texts])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)  # padding never enters the loss
    items = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    return DataLoader(items, batch_size=batch_size, shuffle=True)


class ForgetTexts(LightningModule):
    """Gradient ascent on the texts: maximise their NLL, stopping once it reaches ``ceiling`` nats."""

    def __init__(self, lr: float = 3e-4, ceiling: float = 12.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
            tie_word_embeddings=False,
        )
        self.model = LlamaForCausalLM(config)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll = self.model(**batch).loss
        self.log("train/forget_nll", nll, prog_bar=True)
        # Past the ceiling the ascent only blows the weights up; a zero-gradient loss stops it there.
        return -torch.clamp(nll, max=self.hparams.ceiling)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.0)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10, help="Steps between survival checks.")
    parser.add_argument("--out", default="outputs/own_module", help="Logs and pictures go here.")
    args = parser.parse_args(argv)

    seed_everything(0)
    module = ForgetTexts()
    logger = CSVLogger(args.out)

    survival = QuantizationSurvival(every_n_steps=args.every, schemes=("nf4", "fp4"))  # lit-unlearn
    trainer = Trainer(
        max_steps=args.max_steps, logger=logger,
        callbacks=[survival],  # lit-unlearn
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(module, batches(TEXTS, batch_size=2))

    # Any per-layer statistic of the history can be drawn; the cosine shows whether what survives
    # points along the update or is rounding noise.
    path = Path(logger.log_dir) / "survival_nf4_cosine.png"
    heatmap = survival_heatmap(survival.history, "nf4", path, metric="cosine")
    last_step = max(e["step"] for e in survival.functional_history)
    for entry in (e for e in survival.functional_history if e["step"] == last_step):
        effect = entry["effect_retained"]
        shown = "n/a (the forget loss barely moved)" if effect is None else f"{effect:.0%}"
        print(f"{entry['scheme']}: forget NLL {entry['forget_fp']:.2f} at full precision, "
              f"{entry['forget_q']:.2f} quantized; effect retained {shown}")
    print(f"Per-layer survival: {heatmap}")
    return {"survival": survival, "heatmap": heatmap, "log_dir": Path(logger.log_dir)}


if __name__ == "__main__":
    main()
