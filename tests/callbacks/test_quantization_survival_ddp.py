"""QuantizationSurvival under 2-process CPU DDP: all ranks log the same values, rank zero writes the table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from lit_unlearn.callbacks import QuantizationSurvival
from lit_unlearn.callbacks.quantization_survival import TABLE_NAME

VOCAB = 64


class Unlearner(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        self.model = LlamaForCausalLM(config)

    def training_step(self, batch, batch_idx):
        return -self.model(**batch["forget"]).loss + self.model(**batch["retain"]).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class DumpPerRank(Callback):
    """Writes each rank's survival metrics and callback history to ``rank<r>.json`` at train end."""

    def __init__(self, directory: str, survival: QuantizationSurvival):
        self.directory, self.survival = directory, survival

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("survival/")}
        survival = self.survival
        dump = {"metrics": metrics, "history": survival.history, "functional": survival.functional_history}
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(dump))


def batches(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)

    def split():
        ids = torch.randint(3, VOCAB, (2, 12), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    return DataLoader([{"forget": split(), "retain": split()} for _ in range(n)], batch_size=None)


def test_ranks_agree_under_ddp(tmp_path):
    survival = QuantizationSurvival(every_n_steps=2, schemes=("nf4",), warn_below=float("-inf"))
    # Callbacks run in list order: the dump sees the values of the fit-end check.
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_notebook", max_steps=4, default_root_dir=tmp_path,
        callbacks=[survival, DumpPerRank(str(tmp_path), survival)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Unlearner(), batches(8))

    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = {"survival/nf4/changed", "survival/nf4/cosine", "survival/nf4/effect_retained"}
    assert expected <= rank0["metrics"].keys()
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["history"] == rank1["history"] and len(rank0["history"]) == 2 * 14
    # Each rank trained on its own shard, yet both probed rank zero's batch.
    assert rank0["functional"] == rank1["functional"]
    # Only rank zero wrote the per-layer table: header plus one row per layer and check.
    assert len((tmp_path / TABLE_NAME).read_text().splitlines()) == 1 + 2 * 14
