"""MagnitudeFloor: on a base that sits on the q4_1 grid, a small update rounds back (the check's reversion);
the callback finds a share of pushes that keeps the forgetting at q4_1, saves that model, and the saved
model's q4_1 deployment — quantized by hand from the files — computes the losses the callback reported.
Quiet where the plain update survives; refusals name the value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_unlearn.callbacks import MagnitudeFloor
from lit_unlearn.deployment import quantize_model_

VOCAB = 64


def tiny_llama(on_q4_1: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if on_q4_1:
        quantize_model_(model, "q4_1")  # a GGUF file's weights: every linear layer on the q4_1 grid
    return model


def split(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def data(n: int = 4, retain_is_forget: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    batches = [{"forget": split(torch.randint(3, 24, (4, 12), generator=g)),
                "retain": split(torch.randint(24, VOCAB, (4, 12), generator=g))} for _ in range(n)]
    if retain_is_forget:  # what is forgotten is also what must stay: every push costs the retain loss
        batches = [{"forget": b["forget"], "retain": b["forget"]} for b in batches]
    return DataLoader(batches, batch_size=None)


class Unlearner(LightningModule):
    def __init__(self, lr: float, on_q4_1: bool = True, retain: bool = True, linear_only: bool = True) -> None:
        super().__init__()
        self.model = tiny_llama(on_q4_1)
        self.lr = lr
        self.retain = retain  # False: gradient ascent alone, which drags the retain loss up with the forget loss
        if linear_only:  # the deployed (quantized) weights alone train: embeddings, norms and the head stay
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("model.layers.") and "_proj" in name)

    def training_step(self, batch, batch_idx):
        loss = -self.model(**batch["forget"]).loss
        return loss + self.model(**batch["retain"]).loss if self.retain else loss

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def fit(root: Path, module: LightningModule, floor: MagnitudeFloor, steps: int = 4, **data_kwargs) -> Trainer:
    seed_everything(0)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=root, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[floor])
    trainer.fit(module, data(**data_kwargs))
    return trainer


def probe_losses(model: torch.nn.Module) -> dict[str, float]:
    """The callback's probe by hand: the first four training batches, mean loss per split."""
    out: dict[str, list[float]] = {"forget": [], "retain": []}
    model.eval()
    with torch.no_grad():
        for batch in data():
            for part in out:
                out[part].append(float(model(**batch[part]).loss))
    return {part: sum(v) / len(v) for part, v in out.items()}


def test_a_reverting_update_is_pushed_until_q4_1_keeps_the_forgetting(tmp_path: Path) -> None:
    floor = MagnitudeFloor(target=1.0)  # the deployment: the grid the base sits on, detected
    fit(tmp_path, Unlearner(lr=1e-4), floor)
    plan = floor.plan
    assert floor.deployment is not None and floor.deployment.precision == "q4_1"
    assert plan is not None and plan.trials[0].share == 0.0
    # The true positive: as trained, q4_1 keeps little of the forgetting (the update rounds back) ...
    assert plan.trials[0].effect_retained < 0.5
    # ... and a share of pushes keeps all of it.
    assert plan.met and plan.share > 0 and plan.chosen.effect_retained >= 1.0 and plan.chosen.pushed > 0
    # The smallest share that does: every smaller share tried fell short, and the search bisected towards it.
    assert all(t.effect_retained < 1.0 for t in plan.trials if t.share < plan.share)
    assert [t.share for t in plan.trials] == sorted(t.share for t in plan.trials)
    tried = set(MagnitudeFloor().shares)
    assert any(t.share not in tried and t.share > 0 for t in plan.trials) or plan.share == min(tried)
    assert floor.saved_to == tmp_path / "floored-q4_1"
    report = json.loads((floor.saved_to / "floor.json").read_text())
    assert report["share"] == plan.share and len(report["trials"]) == len(plan.trials)
    assert json.loads((tmp_path / "floor-q4_1.json").read_text()) == report
    # The saved files, deployed at q4_1 by hand, compute what the callback measured for the chosen share.
    saved = AutoModelForCausalLM.from_pretrained(floor.saved_to)
    quantize_model_(saved, "q4_1")
    by_hand = probe_losses(saved)
    assert by_hand["forget"] == pytest.approx(plan.chosen.forget, rel=1e-5)
    assert by_hand["retain"] == pytest.approx(plan.chosen.retain, rel=1e-5)
    original = probe_losses(tiny_llama(on_q4_1=True))  # on the grid, so this is also its q4_1 deployment
    assert by_hand["forget"] - original["forget"] >= plan.full["forget"] - original["forget"]


def test_quiet_where_the_plain_update_survives(tmp_path: Path) -> None:
    floor = MagnitudeFloor("int4", target=0.5)
    fit(tmp_path, Unlearner(lr=3e-2, on_q4_1=False), floor)  # large steps: the update crosses int4's cells
    assert floor.plan is not None and floor.plan.met and floor.plan.share == 0.0
    assert len(floor.plan.trials) == 1 and floor.saved_to is None
    assert not (tmp_path / "floored-int4").exists() and (tmp_path / "floor-int4.json").is_file()


def test_a_base_on_no_grid_needs_the_deployment_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sit on none.*MagnitudeFloor\('q4_1'\)"):
        fit(tmp_path, Unlearner(lr=1e-4, on_q4_1=False), MagnitudeFloor())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"deployment": "full"}, "'full' has none"), ({"deployment": "int8"}, "LLM.int8 quantizes activations"),
     ({"deployment": "q4_k_m"}, "no quantization cells"), ({"deployment": "bf16"}, "a cast has no grid"),
     ({"target": 0}, "`target`"), ({"shares": (0.01, 0.001)}, "ascending"), ({"shares": (0.0,)}, r"\(0, 1\]"),
     ({"retain_tolerance": -1}, "`retain_tolerance`"), ({"probe_batches": 0}, "`probe_batches`"),
     ({"refine": -1}, "`refine`")],
)
def test_refusals_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MagnitudeFloor(**kwargs)


class LoraUnlearner(Unlearner):
    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        self.model = get_peft_model(self.model, config)


def test_a_lora_run_is_saved_merged_with_its_pushes(tmp_path: Path) -> None:
    module = LoraUnlearner(lr=3e-4)
    floor = MagnitudeFloor("q4_1", shares=(0.001, 0.01, 0.1), retain_tolerance=10.0)
    fit(tmp_path, module, floor)
    plan = floor.plan
    assert plan is not None and plan.trials[0].effect_retained < 0.5 and plan.met and plan.share > 0
    saved = AutoModelForCausalLM.from_pretrained(floor.saved_to)
    assert not any("lora" in name for name in saved.state_dict())
    base = tiny_llama(on_q4_1=True).state_dict()
    for name, tensor in saved.state_dict().items():
        adapted = any(f"{m}.weight" in name for m in ("q_proj", "v_proj", "down_proj"))
        assert torch.equal(tensor, base[name]) != adapted, name  # exactly the adapted layers changed
    quantize_model_(saved, "q4_1")
    assert probe_losses(saved)["forget"] == pytest.approx(plan.chosen.forget, rel=1e-5)


def test_a_share_that_breaks_the_retain_loss_is_refused(tmp_path: Path) -> None:
    # Gradient ascent alone on data that is also the retain set: pushing every updated weight along it keeps
    # the forgetting many times over, and raises the retain loss just as much.
    floor = MagnitudeFloor("q4_1", shares=(1.0,), retain_tolerance=0.0)
    with pytest.warns(UserWarning, match="the pushed model is not saved"):
        fit(tmp_path, Unlearner(lr=1e-4, retain=False), floor, retain_is_forget=True)
    plan = floor.plan
    assert plan is not None and not plan.met and floor.saved_to is None
    bar = max(plan.full["retain"], plan.original_deployed["retain"])
    assert plan.trials[-1].share == 1.0 and plan.trials[-1].retain > bar
    assert plan.notes[-1].startswith("share 1: retain loss") and not (tmp_path / "floored-q4_1").exists()


def test_a_resumed_fit_keeps_w0_and_the_probe(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root: Path, steps: int, ckpt_path: str | None = None, floor: bool = True) -> MagnitudeFloor | None:
        seed_everything(0)
        callback = MagnitudeFloor("q4_1", shares=(0.01, 0.1), probe_batches=2) if floor else None
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=root, logger=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)] + ([callback] if floor else []))
        trainer.fit(Unlearner(lr=1e-4, linear_only=False), data(), ckpt_path=ckpt_path)
        return callback

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)  # the probe is complete after 2 steps; W0's snapshot and the probe go into last.ckpt
    resumed = run(tmp_path / "split", 4, ckpt_path=str(tmp_path / "split" / "ckpt" / "last.ckpt"))
    assert straight.plan is not None and resumed.plan is not None
    # What depends on W0 and the probe alone is what an uninterrupted fit measures, bit for bit.
    assert resumed.plan.original == straight.plan.original
    assert resumed.plan.original_deployed == straight.plan.original_deployed
    # ... and it is the original model, norms, embeddings and head included, not a hybrid with trained ones.
    fresh = tiny_llama(on_q4_1=True).eval()
    with torch.no_grad():
        by_hand = sum(float(fresh(**b["forget"]).loss) for b in list(data())[:2]) / 2
    assert straight.plan.original["forget"] == pytest.approx(by_hand, rel=1e-6)
    assert resumed._others and all(torch.equal(t, straight._others[name]) for name, t in resumed._others.items())
    snapshots = {layer.name: layer.snapshot for layer in straight._layers}
    assert all(torch.equal(layer.snapshot, snapshots[layer.name]) for layer in resumed._layers if layer.snapshot is not None)
    # A checkpoint without the callback's state cannot say where the run started: refused, not guessed.
    run(tmp_path / "plain", 2, floor=False)
    with pytest.raises(ValueError, match="needs the weights this run started from"):
        run(tmp_path / "plain", 4, ckpt_path=str(tmp_path / "plain" / "ckpt" / "last.ckpt"))
