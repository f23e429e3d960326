"""SafetensorsCheckpointIO: exact round trip, real safetensors with nothing pickled, bit-identical resume."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn.checkpoint_io import SKELETON_KEY, SafetensorsCheckpointIO

LORA = LoRA(r=4, alpha=8, dropout=0.0)


def assert_same(a, b, where="checkpoint"):
    """Equal values of exactly the same types, recursively; tensors equal in dtype, shape and values."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        assert [type(k) for k in a] == [type(k) for k in b], where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
        assert_same(getattr(a, "_metadata", None), getattr(b, "_metadata", None), f"{where}._metadata")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def sample_checkpoint() -> dict:
    tied = torch.randn(4, 3)
    norm = torch.ones(3, dtype=torch.bfloat16)
    state = OrderedDict([("embed.weight", tied), ("head.weight", tied), ("norm.weight", norm)])
    state._metadata = OrderedDict([("", {"version": 1}), ("norm", {"version": 2})])
    buffer = torch.arange(10.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]))
    return {
        "epoch": 3,
        "global_step": 12,
        "state_dict": state,
        "optimizer_states": [
            {
                "state": {
                    0: {"step": torch.tensor(12.0), "exp_avg": torch.randn(4, 3)},
                    1: {"step": torch.tensor(2.0)},
                },
                "param_groups": [
                    {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None, "params": [0, 1]}
                ],
            }
        ],
        # A real scheduler state: ReduceLROnPlateau keeps `best = inf`, which JSON has no literal for.
        "lr_schedulers": [plateau.state_dict()],
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/tmp/x"}},
        "hyper_parameters": {"lora": {"r": 4, "target_modules": ["q_proj"]}, "nested": ((1, 2), [3.5, "a"])},
        "odd": {
            "nan": float("nan"), "inf": float("-inf"), "flag": True, "big": 2**70, "empty": torch.zeros(0, 5),
            "transposed": torch.randn(3, 5).t(), "halves": [buffer[:5], buffer[5:]],
            "int_keys": {(1, "a"): 1, None: 2}, "looks_tagged": {"$tensor": "not a reference"},
            "ints": torch.arange(6, dtype=torch.int64).view(2, 3),
            "mask": torch.tensor([True, False]), "scalar": torch.tensor(7, dtype=torch.int32),
        },
    }


def test_round_trip_is_exact(tmp_path):
    io = SafetensorsCheckpointIO()
    checkpoint = sample_checkpoint()
    io.save_checkpoint(checkpoint, tmp_path / "sub" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "sub" / "last.ckpt")
    assert_same(checkpoint, loaded)
    # A tied tensor is stored once and comes back as one tensor in both places, as torch.save does.
    assert loaded["state_dict"]["embed.weight"] is loaded["state_dict"]["head.weight"]
    assert not (tmp_path / "sub" / "last.ckpt.tmp").exists()


def test_file_is_plain_safetensors_with_nothing_pickled(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "last.ckpt"
    SafetensorsCheckpointIO().save_checkpoint(sample_checkpoint(), path)
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        torch.testing.assert_close(f.get_tensor("optimizer_states/0/state/0/step"), torch.tensor(12.0))
        skeleton = json.loads(f.metadata()[SKELETON_KEY])
    assert "state_dict/embed.weight" in keys and "state_dict/head.weight" not in keys
    tied = ["head.weight", {"$tensor": "state_dict/embed.weight"}]
    assert skeleton["state_dict"]["$odict"]["items"][1] == tied
    # The whole file is the 8-byte header length, the JSON header and the tensors' raw bytes, back to back:
    # there is no room for anything else, pickled or not.
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    spans = sorted(tuple(entry["data_offsets"]) for key, entry in header.items() if key != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert 8 + header_len + spans[-1][1] == len(data)


@dataclasses.dataclass
class Settings:
    r: int = 4


class Mode(enum.Enum):
    FAST = "fast"


@pytest.mark.parametrize(
    "value", [Settings(), Mode.FAST, Path("/tmp"), {1, 2}], ids=["dataclass", "enum", "path", "set"]
)
def test_values_without_a_faithful_form_name_their_place(tmp_path, value):
    checkpoint = {"epoch": 0, "hyper_parameters": {"lora": value}}
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['lora'\].*TorchCheckpointIO"):
        SafetensorsCheckpointIO().save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    assert not any(tmp_path.iterdir()), "nothing is written when encoding fails"


def test_torch_save_checkpoint_is_rejected_with_a_hint(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"epoch": 0}, path)
    with pytest.raises(ValueError, match="TorchCheckpointIO"):
        SafetensorsCheckpointIO().load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        SafetensorsCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_fsspec_paths_round_trip():
    io = SafetensorsCheckpointIO()
    checkpoint = sample_checkpoint()
    io.save_checkpoint(checkpoint, "memory://lit-unlearn-test/last.ckpt")
    assert_same(checkpoint, io.load_checkpoint("memory://lit-unlearn-test/last.ckpt"))
    io.remove_checkpoint("memory://lit-unlearn-test/last.ckpt")
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint("memory://lit-unlearn-test/last.ckpt")


# ---------------------------------------------------------------------- with a Trainer
def fit(tiny_model_dir, text_files, root, lora, max_steps, ckpt_path=None):
    seed_everything(0)
    # Plain GA keeps each step to one forward pass; a checkpoint holds the same state for any objective.
    module = UnlearningModule(tiny_model_dir, objective="ga", lora=lora,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, max_length=32, batch_size=8,
                                shuffle=False)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer = Trainer(
        accelerator="cpu", devices=1, default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, callbacks=[checkpoint],
        plugins=[SafetensorsCheckpointIO()],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, trainer, dm


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_resume_continues_bit_identically(tiny_model_dir, text_files, tmp_path, lora):
    from safetensors import safe_open

    straight, trainer, _ = fit(tiny_model_dir, text_files, tmp_path / "straight", lora, max_steps=2)
    # Stop at an epoch boundary (one batch per epoch here): Lightning replays a plain DataLoader from the
    # start of the interrupted epoch, so only boundary checkpoints can continue bit-for-bit.
    assert trainer.num_training_batches == 1
    fit(tiny_model_dir, text_files, tmp_path / "split", lora, max_steps=1)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    with safe_open(last, framework="pt") as f:
        names = list(f.keys())
    assert any(n.startswith("optimizer_states/0/state/") for n in names)
    if lora is not None:
        weights = [n for n in names if n.startswith("state_dict/")]
        assert all("lora_" in n for n in weights), "LoRA checkpoints hold only the adapter"
    resumed, trainer, dm = fit(tiny_model_dir, text_files, tmp_path / "split", lora, 2, ckpt_path=str(last))
    assert trainer.global_step == 2
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    # `test` finds the safetensors `last.ckpt` by name and loads the weights it holds.
    trained = {n: p.detach().clone() for n, p in resumed.model.named_parameters()}
    with torch.no_grad():
        for p in resumed.model.parameters():
            if p.requires_grad:
                p.zero_()
    trainer.test(resumed, dm, ckpt_path="last", verbose=False)
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, trained[name], rtol=0, atol=0, msg=name)


def test_plugin_from_yaml_through_the_cli(tiny_model_dir, text_files, tmp_path):
    from lit_unlearn.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""# lit-unlearn fit -c {config}
model:
  model_name_or_path: {tiny_model_dir}
  objective: ga
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
data:
  forget: {{path: {text_files["forget"]}}}
  retain: null
  max_length: 32
  batch_size: 8
trainer:
  accelerator: cpu
  max_steps: 1
  logger: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  plugins:
    - class_path: lit_unlearn.checkpoint_io.SafetensorsCheckpointIO
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
""",
        encoding="utf-8",
    )
    main(["fit", "-c", str(config)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    hparams = SafetensorsCheckpointIO().load_checkpoint(last)["hyper_parameters"]
    assert hparams["objective"]["method"] == "ga" and hparams["lora"]["r"] == 4
    main(["test", "-c", str(config), "--ckpt_path", "last"])
