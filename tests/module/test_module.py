"""UnlearningModule on a tiny Llama: objectives at step 0, reference, fit, saving, resume, SURE, errors."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn.objectives import ObjectiveSettings
from lit_unlearn.data import collate

LORA = LoRA(r=4, alpha=8, dropout=0.0)
GA_GDR = ObjectiveSettings("ga_gdr", retain_weight=1.0)


def make_trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def built(tiny_model_dir, **kwargs) -> UnlearningModule:
    module = UnlearningModule(tiny_model_dir, **kwargs)
    module.configure_model()
    return module


def batch_of(module, texts):
    ids = [torch.tensor(module.tokenizer(t)["input_ids"]) for t in texts]
    return collate(ids, module.tokenizer.pad_token_id)


def combined(module):
    return {
        "forget": batch_of(module, ["alpha beta gamma river stone.", "north mayor harbour council."]),
        "retain": batch_of(module, ["seven lantern orchard bridge.", "delta river north."]),
    }


def test_npo_with_lora_at_step_zero_is_two_over_beta_ln2(tiny_model_dir):
    module = built(tiny_model_dir, objective=ObjectiveSettings("npo", npo_beta=0.1), lora=LORA)
    out = module.objective(
        module._forward(module.model, combined(module)["forget"]),
        combined(module)["forget"]["labels"],
        forget_ref_logits=module._reference_logits(combined(module)["forget"]),
    )
    assert out.forget_loss.item() == pytest.approx(2 / 0.1 * math.log(2), abs=1e-6)


def test_klr_is_zero_at_step_zero(tiny_model_dir):
    module = built(tiny_model_dir, objective="ga_klr", lora=LORA)
    retain = combined(module)["retain"]
    out = module.objective.retain(module._forward(module.model, retain), retain["labels"], module._reference_logits(retain))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)


def test_reference_with_adapter_disabled_is_bit_identical_to_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    module = built(tiny_model_dir, objective="npo", lora=LORA)
    for name, p in module.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter
    batch = combined(module)["forget"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    module.model.eval()
    expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(module._reference_logits(batch), expected, rtol=0, atol=0)
    assert not torch.equal(module._forward(module.model, batch), expected)


def _param_count(module):
    return sum(p.numel() for p in module.parameters())


def test_reference_is_built_only_when_the_objective_reads_it(tiny_model_dir):
    gdr = built(tiny_model_dir, objective="ga_gdr", lora=None)
    npo = built(tiny_model_dir, objective="npo_gdr", lora=None)
    lora_npo = built(tiny_model_dir, objective="npo_klr", lora=LORA)
    assert gdr.reference is None
    assert npo.reference is not None and not any(p.requires_grad for p in npo.reference.parameters())
    assert _param_count(npo) == 2 * _param_count(gdr)
    # With LoRA the reference is the base with the adapter off: no second copy of the model.
    assert lora_npo.reference is None
    assert _param_count(lora_npo) < 1.5 * _param_count(gdr)


def _nll(module, batch):
    return module.quantization_probe_loss(batch).item()


def test_fit_lowers_forget_likelihood_and_gdr_keeps_retain(tiny_model_dir, text_files, tmp_path):
    seed_everything(0)
    module = built(tiny_model_dir, objective=GA_GDR, lora=LoRA(r=8, alpha=16, dropout=0.0),
                   optimizer=lambda p: torch.optim.AdamW(p, lr=2e-2))
    probe = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], tokenizer=tiny_model_dir,
                                   max_length=32, batch_size=64, shuffle=False)
    probe.setup("fit")
    forget, retain = (next(iter(probe._loader(name))) for name in ("forget", "retain"))
    forget0, retain0 = _nll(module, forget), _nll(module, retain)
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32, batch_size=4)
    make_trainer(tmp_path, max_steps=15).fit(module, dm)
    forget1, retain1 = _nll(module, forget), _nll(module, retain)
    # A tiny random model's fixed head bounds how far GA can push; what matters is the direction.
    assert forget1 > forget0 + 0.1, (forget0, forget1)
    assert retain1 < retain0 + 0.05, (retain0, retain1)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_saved_adapter_reloads_with_peft_and_reproduces_logits(tiny_model_dir, text_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module = UnlearningModule(tiny_model_dir, objective="ga", lora=LORA, output_dir=str(tmp_path / "out"),
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, max_length=32, batch_size=4)
    make_trainer(tmp_path, max_steps=3).fit(module, dm)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out").eval()
    module.model.eval()
    batch = combined(module)["forget"]
    torch.testing.assert_close(module._forward(module.model, batch), reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    assert (tmp_path / "out" / "tokenizer.json").exists()


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_checkpoint_resume_continues_exactly(tiny_model_dir, text_files, tmp_path, lora):
    def run(max_steps, ckpt_path=None, root="a"):
        seed_everything(0)
        module = UnlearningModule(tiny_model_dir, objective="npo_gdr", lora=lora,
                                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32,
                                    batch_size=4, shuffle=False)
        ckpt = ModelCheckpoint(dirpath=tmp_path / root, save_last=True)
        trainer = make_trainer(tmp_path / root, max_steps=max_steps, enable_checkpointing=True, callbacks=[ckpt])
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        return module, trainer, ckpt

    # Stop at an epoch boundary: Lightning replays a plain (non-stateful) DataLoader from the start of
    # the interrupted epoch, so only boundary checkpoints can continue bit-for-bit.
    straight, trainer, _ = run(8, root="straight")
    assert 4 % trainer.num_training_batches == 0
    _, _, ckpt = run(4, root="split")
    saved = torch.load(ckpt.last_model_path, weights_only=False)
    if lora is not None:
        assert all("lora_" in k for k in saved["state_dict"]), "LoRA checkpoints hold only the adapter"
    else:
        assert all(k.startswith("model.") for k in saved["state_dict"]), "no copy of the frozen reference"
    resumed, trainer, _ = run(8, ckpt_path=ckpt.last_model_path, root="split")
    assert trainer.global_step == 8
    if lora is None:  # the reference is still the model as loaded, not the checkpoint's weights
        from transformers import AutoModelForCausalLM

        original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
        for name, tensor in resumed.reference.state_dict().items():
            torch.testing.assert_close(tensor, original[name], rtol=0, atol=0, msg=name)
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_sure_mask_keeps_unselected_rows_fixed(tiny_model_dir, text_files, tmp_path):
    module = UnlearningModule(tiny_model_dir, objective="ga_gdr", lora=None, sure_percentile=90.0,
                              optimizer=lambda p: torch.optim.SGD(p, lr=1e-1))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32, batch_size=4)
    make_trainer(tmp_path, max_steps=1).fit(module, dm)
    masks = module._sure_masks
    weight = "model.layers.0.mlp.down_proj.weight"
    moved = (module.model.get_parameter(weight) != before[weight]).any(dim=1)
    assert masks[weight].sum() < masks[weight].numel() // 2
    assert not moved[~masks[weight]].any(), "rows outside the SURE mask must not move"
    assert moved[masks[weight]].any()


# ---------------------------------------------------------------------- errors
def test_unknown_objective_lists_choices():
    with pytest.raises(ValueError, match="npo_gdr"):
        UnlearningModule("unused", objective="npo_kl")


def test_lora_targets_not_found_lists_linear_names(tiny_model_dir):
    module = UnlearningModule(tiny_model_dir, objective="ga", lora=LoRA(target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=r"c_attn.*q_proj"):
        module.configure_model()


def test_missing_data_path_is_named():
    with pytest.raises(FileNotFoundError, match="no/such/forget.txt"):
        ForgetRetainDataModule(forget="no/such/forget.txt", retain=None)


def test_empty_forget_set(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    dm = ForgetRetainDataModule(forget=str(empty), retain=None, tokenizer=tiny_model_dir)
    with pytest.raises(ValueError, match="empty"):
        dm.setup("fit")


def test_retain_term_without_retain_data(tiny_model_dir, text_files, tmp_path):
    module = UnlearningModule(tiny_model_dir, objective="npo_gdr", lora=LORA)
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, max_length=32)
    with pytest.raises(ValueError, match="retain"):
        make_trainer(tmp_path, max_steps=1).fit(module, dm)


def test_sure_with_lora_is_rejected():
    with pytest.raises(ValueError, match="lora: null"):
        UnlearningModule("unused", objective="ga_gdr", sure_percentile=90.0)


def test_two_process_ddp_fit_saves_once(tiny_model_dir, text_files, tmp_path):
    module = UnlearningModule(tiny_model_dir, objective="npo_gdr", lora=LORA)
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32, batch_size=2)
    trainer = make_trainer(tmp_path, max_steps=2, strategy="ddp_notebook", devices=2)
    trainer.fit(module, dm)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_reference_runs_without_dropout_while_training_keeps_it(tiny_model_dir, text_files, lora):
    module = UnlearningModule(tiny_model_dir, objective="npo_gdr", lora=lora)
    module.configure_model()
    models = [module.model] + ([module.reference] if module.reference is not None else [])
    for model in models:
        for m in model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = 0.5
    # Every submodule in train mode at fit start (Lightning warns otherwise), reference included.
    assert all(m.training for model in models for m in model.modules())
    batch = combined(module)["forget"]
    torch.manual_seed(0)
    first, second = module._reference_logits(batch), module._reference_logits(batch)
    assert torch.equal(first, second)  # π_ref is deterministic
    assert all(m.training for model in models for m in model.modules())  # and modes come back
    policy = module._forward(module.model, batch)
    assert not torch.equal(policy, module._forward(module.model, batch))  # training sees dropout


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_quantization_aware_losses_see_the_deployed_model(tiny_model_dir, lora):
    from lit_unlearn.deployment import quantize_model_

    module = built(tiny_model_dir, objective=GA_GDR, lora=lora, quantization_aware="nf4")
    batch = combined(module)
    deployed = UnlearningModule(tiny_model_dir, objective=GA_GDR, lora=lora)
    deployed.configure_model()
    deployed.model.load_state_dict(module.model.state_dict())
    net = deployed.model.merge_and_unload() if lora is not None else deployed.model
    quantize_model_(net, "nf4")
    deployed.model = net
    with torch.no_grad():
        want = deployed._forward(net, batch["forget"])
        with module._deployed(True):
            got = module._forward(module.model, batch["forget"])
        plain = module._forward(module.model, batch["forget"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, plain)


def test_quantization_aware_fit_trains_and_none_is_the_plain_run(tiny_model_dir, text_files, tmp_path):
    def fit(**kwargs):
        seed_everything(0)
        module = built(tiny_model_dir, objective=GA_GDR, lora=LORA,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=2e-2), **kwargs)
        dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32,
                                    batch_size=4)
        make_trainer(tmp_path / str(len(kwargs)), max_steps=3).fit(module, dm)
        return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}

    plain = fit()
    explicit = fit(quantization_aware=None)
    aware = fit(quantization_aware="nf4")
    assert all(torch.equal(plain[n], explicit[n]) for n in plain), "the option off is the plain run"
    assert any(not torch.equal(plain[n], aware[n]) for n in plain), "quantization-aware steps differ"
    assert all(torch.isfinite(p).all() for p in aware.values())


def test_non_finite_loss_stops_with_step_and_term_and_keeps_the_last_checkpoint(
    tiny_model_dir, text_files, tmp_path, monkeypatch
):
    from lit_unlearn.checkpoint_io import SafetensorsCheckpointIO

    seed_everything(0)
    module = built(tiny_model_dir, objective=GA_GDR, lora=LORA)
    real = module.objective.__class__.__call__

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if module.trainer.global_step == 2:
            nan = torch.tensor(float("nan"))
            return out._replace(loss=out.loss + nan, metrics={**out.metrics, "forget/loss": nan})
        return out

    monkeypatch.setattr(module.objective.__class__, "__call__", poisoned)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], max_length=32, batch_size=4)
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[checkpoint], enable_checkpointing=True,
                           plugins=[SafetensorsCheckpointIO()])
    with pytest.raises(FloatingPointError, match=r"optimizer step 3: forget/loss = nan.*--ckpt_path last"):
        trainer.fit(module, dm)
    saved = SafetensorsCheckpointIO().load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert saved["global_step"] == 2, "the last good step's checkpoint is intact"


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, lora):
    grads = []
    for checkpointing in (False, True):
        seed_everything(0)  # the same adapter initialisation
        module = built(tiny_model_dir, objective="npo_gdr", lora=lora, gradient_checkpointing=checkpointing)
        assert module.model.is_gradient_checkpointing is checkpointing
        batch = combined(module)
        # Train mode (transformers checkpoints only in training); the tiny Llama and LORA have no dropout,
        # so the recomputed forward is the same forward.
        forget = module._forward(module.model, batch["forget"])
        loss = -forget.log_softmax(-1).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("retain_aware", [True, False], ids=["retain-aware", "retain-plain"])
@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_quantization_aware_gradients_are_the_same_with_gradient_checkpointing(tiny_model_dir, lora, retain_aware):
    # Backward recomputes each checkpointed block after `training_step` has left the quantization-aware
    # context: the recomputation must run the block as its forward did (straight-through for the forget
    # pass, and for the retain pass only when `quantization_aware_retain`), or the gradients are those of
    # another model (full-parameter) or the recomputation fails (LoRA's CheckpointError).
    grads = []
    for checkpointing in (False, True):
        seed_everything(0)
        module = built(tiny_model_dir, objective=GA_GDR, lora=lora, quantization_aware="nf4",
                       quantization_aware_retain=retain_aware, gradient_checkpointing=checkpointing)
        assert module.model.is_gradient_checkpointing is checkpointing
        batch = combined(module)
        with module._deployed(True):
            forget = module._forward(module.model, batch["forget"])
        with module._deployed(retain_aware):
            retain = module._forward(module.model, batch["retain"])
        loss = forget.log_softmax(-1).mean() - 0.5 * retain.log_softmax(-1).mean()
        loss.backward()  # outside both contexts, as Lightning runs it
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
