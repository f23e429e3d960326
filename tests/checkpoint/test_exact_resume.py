"""Resume is exact: a fit stopped mid-epoch and resumed ends on the same weights, bit for bit.

The forget set makes 5 batches per epoch and the retain set 3 (so it cycles within an epoch), training
shuffles, and LoRA dropout draws from the global RNG: everything a resumed run could get wrong.
"""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tests.conftest import WORDS, make_texts

from lit_unlearn import ForgetRetainDataModule, FourBitBase, LoRA, UnlearningModule
from lit_unlearn.checkpoint_io import SafetensorsCheckpointIO
from lit_unlearn.data.sampling import ResumableSampler, consumed_per_loader


@pytest.fixture(scope="module")
def uneven_texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("uneven")
    forget, retain = path / "forget.txt", path / "retain.jsonl"
    forget.write_text("\n\n".join(make_texts(10, seed=1, words=WORDS[:7])), encoding="utf-8")
    retain.write_text("\n".join(json.dumps({"text": t}) for t in make_texts(6, seed=2, words=WORDS[7:])),
                      encoding="utf-8")
    return {"forget": str(forget), "retain": str(retain)}


def fit(model_dir, texts, root, lora, max_steps, ckpt_path=None, mode="max_size_cycle", **module_kwargs):
    seed_everything(0)
    module = UnlearningModule(model_dir, objective="npo_gdr", lora=lora,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **module_kwargs)
    dm = ForgetRetainDataModule(forget=texts["forget"], retain=texts["retain"], max_length=32, batch_size=2,
                                packing="document", mode=mode)
    trainer = Trainer(
        accelerator="cpu", devices=1, default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, plugins=[SafetensorsCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=1)],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, trainer


def weights(module):
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("lora", "stop"), [(LoRA(r=4, alpha=8, dropout=0.1), 3), (LoRA(r=4, alpha=8, dropout=0.1), 7),
                                             (None, 2)], ids=["lora-mid-epoch", "lora-second-epoch", "full"])
def test_resume_mid_epoch_is_bit_identical(tiny_model_dir, uneven_texts, tmp_path, lora, stop):
    straight, trainer = fit(tiny_model_dir, uneven_texts, tmp_path / "straight", lora, max_steps=9)
    assert trainer.num_training_batches == 5, "the test needs an epoch longer than the stop"
    fit(tiny_model_dir, uneven_texts, tmp_path / "split", lora, max_steps=stop)
    resumed, trainer = fit(tiny_model_dir, uneven_texts, tmp_path / "split", lora, max_steps=9,
                           ckpt_path=str(tmp_path / "split" / "checkpoints" / "last.ckpt"))
    assert trainer.global_step == 9
    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_qlora_resume_mid_epoch_is_bit_identical(tiny_model_dir, uneven_texts, tmp_path):
    # A base whose rows are whole 64-blocks, loaded in nf4 on every fit: the checkpoint holds the adapter
    # only, and quantizing the same weights again gives the same base.
    from tests.conftest import build_tiny_llama
    from transformers import AutoTokenizer

    model_dir = str(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = build_tiny_llama(len(tokenizer))
    wide = type(model)(model.config.__class__(**{**model.config.to_dict(), "hidden_size": 64,
                                                 "intermediate_size": 128}))
    wide.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    lora = LoRA(r=4, alpha=8, dropout=0.1)
    nf4 = FourBitBase()
    straight, _ = fit(model_dir, uneven_texts, tmp_path / "straight", lora, max_steps=7, four_bit=nf4)
    fit(model_dir, uneven_texts, tmp_path / "split", lora, max_steps=3, four_bit=nf4)
    resumed, trainer = fit(model_dir, uneven_texts, tmp_path / "split", lora, max_steps=7, four_bit=nf4,
                           ckpt_path=str(tmp_path / "split" / "checkpoints" / "last.ckpt"))
    assert trainer.global_step == 7
    q_proj = resumed.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit"
    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dropped", ["rng", "data position"])
def test_resume_without_the_saved_state_differs(tiny_model_dir, uneven_texts, tmp_path, monkeypatch, dropped):
    # The true positives: drop the RNG restore (dropout masks differ) or the data position (the epoch
    # replays from its first batch) and the same resume ends elsewhere.
    lora = LoRA(r=4, alpha=8, dropout=0.1)
    straight, _ = fit(tiny_model_dir, uneven_texts, tmp_path / "straight", lora, max_steps=6)
    fit(tiny_model_dir, uneven_texts, tmp_path / "split", lora, max_steps=3)
    if dropped == "rng":
        monkeypatch.setattr(UnlearningModule, "on_train_start", lambda self: None)
    else:
        monkeypatch.setattr(ForgetRetainDataModule, "load_state_dict", lambda self, state: None)
    resumed, _ = fit(tiny_model_dir, uneven_texts, tmp_path / "split", lora, max_steps=6,
                     ckpt_path=str(tmp_path / "split" / "checkpoints" / "last.ckpt"))
    assert any(not torch.equal(a, weights(resumed)[n]) for n, a in weights(straight).items())


def test_sampler_order_is_a_function_of_seed_epoch_and_pass():
    data = list(range(10))
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == data and first != second  # a new pass, a new permutation
    torch.manual_seed(123)  # the global RNG plays no part
    again = ResumableSampler(data, seed=3)
    again.set_epoch(1)
    assert list(again) == first and list(again) == second
    other_epoch = ResumableSampler(data, seed=3)
    other_epoch.set_epoch(2)
    assert list(other_epoch) != first


def test_sampler_resumes_across_passes():
    data = list(range(6))  # batch size 2: 3 batches per pass
    straight = ResumableSampler(data, seed=0)
    straight.set_epoch(0)
    stream = list(straight) + list(straight) + list(straight)
    resumed = ResumableSampler(data, seed=0)
    resumed.resume(epoch=0, batches=4, batch_size=2, cycle=True)  # one whole pass and one batch
    resumed.set_epoch(0)
    assert list(resumed) + list(resumed) == stream[8:]
    # A resume for another epoch (the checkpoint was at an epoch's end) starts the new epoch afresh.
    late = ResumableSampler(data, seed=0)
    late.resume(epoch=0, batches=3, batch_size=2, cycle=True)
    late.set_epoch(1)
    fresh = ResumableSampler(data, seed=0)
    fresh.set_epoch(1)
    assert list(late) == list(fresh)
    # Without cycling, skipping past the end leaves the loader empty for the rest of the epoch.
    once = ResumableSampler(data, seed=0)
    once.resume(epoch=0, batches=5, batch_size=2, cycle=False)
    once.set_epoch(0)
    assert list(once) == []


def test_sampler_shards_like_distributed_sampler():
    from torch.utils.data import DistributedSampler

    data = list(range(11))
    for rank in range(3):
        ours = ResumableSampler(data, shuffle=False, num_replicas=3, rank=rank)
        theirs = DistributedSampler(data, shuffle=False, num_replicas=3, rank=rank)
        ours.set_epoch(0)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)
    shares = [ResumableSampler(data, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for s in shares:
        s.set_epoch(4)
    a, b = (list(s) for s in shares)
    assert len(a) == len(b) == 6 and set(a) | set(b) == set(data)


def test_consumed_per_loader():
    assert consumed_per_loader("max_size_cycle", 4, {"forget": 5, "retain": 3}) == {"forget": 4, "retain": 4}
    assert consumed_per_loader("sequential", 7, {"forget": 5, "retain": 3}) == {"forget": 5, "retain": 2}


# ---------------------------------------------------------------------- a real signal, in a subprocess
def _cli(args, cwd, env=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).parents[2]
    full_env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lit_unlearn.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def _config(path, model_dir, texts, root):
    path.write_text(f"""seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 9
  logger: false
  enable_progress_bar: false
  default_root_dir: {root}
  plugins: [{{class_path: lit_unlearn.checkpoint_io.SafetensorsCheckpointIO}}]
  callbacks:
    - {{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{save_last: true}}}}
    - class_path: tests.checkpoint.signal_at.SignalAt
model:
  model_name_or_path: {model_dir}
  objective: npo_gdr
  lora: {{r: 4, alpha: 8, dropout: 0.1}}
  optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 0.001}}}}
data: {{forget: {texts['forget']}, retain: {texts['retain']}, max_length: 32, batch_size: 2, packing: document}}
""")
    return path


def _adapter(root):
    from safetensors.torch import load_file

    return load_file(root / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, uneven_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    done = _cli(["fit", "-c", str(_config(root / "run.yaml", tiny_model_dir, uneven_texts, root))], cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return _adapter(root)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGINT", 1), ("SIGTERM", 143)])
def test_interrupted_and_resumed_fit_ends_on_the_uninterrupted_adapter(
    tiny_model_dir, uneven_texts, tmp_path, uninterrupted, name, code
):
    config = _config(tmp_path / "run.yaml", tiny_model_dir, uneven_texts, tmp_path)
    stopped = _cli(["fit", "-c", str(config)], cwd=tmp_path, env={"SIGNAL_AT_STEP": "3", "SIGNAL_NAME": name})
    assert stopped.returncode == code, stopped.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the fit stopped after optimizer step 4; saved {last}." in stopped.stderr  # mid-epoch (5 per epoch)
    assert "Traceback" not in stopped.stderr
    command = next(line for line in stopped.stderr.splitlines() if line.startswith("Resume with: "))
    assert command == f"Resume with: lit-unlearn fit -c {config} --ckpt_path last"
    resumed = _cli(command.removeprefix("Resume with: lit-unlearn ").split(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _adapter(tmp_path)
    assert got.keys() == uninterrupted.keys()
    for key in got:
        torch.testing.assert_close(got[key], uninterrupted[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------- two processes
class DumpWeights(Callback):
    """Writes each rank's trainable weights at train end (``rank<r>.safetensors``)."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        from safetensors.torch import save_file

        weights = {n: p.detach().contiguous() for n, p in pl_module.model.named_parameters() if p.requires_grad}
        save_file(weights, str(self.directory / f"rank{trainer.global_rank}.safetensors"))


def adamw(params):  # picklable, for ddp_spawn
    return torch.optim.AdamW(params, lr=1e-3)


def _ddp_fit(model_dir, texts, root, max_steps, ckpt_path=None):
    seed_everything(0)
    module = UnlearningModule(model_dir, objective="npo_gdr", lora=LoRA(r=4, alpha=8, dropout=0.1), optimizer=adamw)
    dm = ForgetRetainDataModule(forget=texts["forget"], retain=texts["retain"], max_length=32, batch_size=2,
                                packing="document")
    root.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", default_root_dir=root, logger=False,
        enable_progress_bar=False, enable_model_summary=False, max_steps=max_steps,
        plugins=[SafetensorsCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=1),
                   DumpWeights(root)],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)


@pytest.mark.slow
def test_ddp_resume_mid_epoch_is_bit_identical(tiny_model_dir, uneven_texts, tmp_path):
    # Two ranks: each takes every other example (5 forget, 3 retain), so an epoch is 3 steps; stop after 2.
    from safetensors.torch import load_file

    _ddp_fit(tiny_model_dir, uneven_texts, tmp_path / "straight", 5)
    _ddp_fit(tiny_model_dir, uneven_texts, tmp_path / "split", 2)
    _ddp_fit(tiny_model_dir, uneven_texts, tmp_path / "split", 5,
             ckpt_path=str(tmp_path / "split" / "checkpoints" / "last.ckpt"))
    for rank in (0, 1):
        expected = load_file(tmp_path / "straight" / f"rank{rank}.safetensors")
        got = load_file(tmp_path / "split" / f"rank{rank}.safetensors")
        assert expected.keys() == got.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=f"rank {rank}: {name}")
