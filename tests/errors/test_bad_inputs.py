"""Every row of docs/bad-inputs.md: the input, when it is caught, and the message (naming value and fix)."""

from __future__ import annotations

import json

import pytest
import torch

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation
from lit_unlearn.cli import main
from lit_unlearn.deployment import Deployment


def _setup(**kwargs):
    dm = ForgetRetainDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_data_path_that_does_not_exist(tmp_path, tiny_model_dir):
    # Caught when the DataModule is built, before any tokenizer or model loads.
    with pytest.raises(FileNotFoundError, match=r"`forget` path '.*nope.txt' does not exist\. Give an existing"):
        ForgetRetainDataModule(forget=str(tmp_path / "nope.txt"), retain=None)
    with pytest.raises(FileNotFoundError, match=r"Data path '/does/not/exist' does not exist.*world:data"):
        _setup(forget={"path": "/does/not/exist", "name": "raw", "split": "forget"}, retain=None,
               tokenizer=tiny_model_dir)


def test_empty_forget_file(tmp_path, tiny_model_dir):
    empty = tmp_path / "forget.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"is empty: it holds no documents"):
        _setup(forget=str(empty), retain=None, tokenizer=tiny_model_dir)


def test_text_column_missing(tmp_path, tiny_model_dir):
    data = tmp_path / "forget.jsonl"
    data.write_text(json.dumps({"body": "alpha beta"}) + "\n")
    with pytest.raises(ValueError, match=r"has no field 'text'; its fields are \['body'\]\. Set `column`"):
        _setup(forget=str(data), retain=None, tokenizer=tiny_model_dir)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: UnlearningModule("x", objective="npo_gdrr"), r"'npo_gdrr'.*npo_gdr"),
    (lambda: QuantizationSurvival(schemes=["nf5"]), r"'nf5'.*'nf4'"),
    (lambda: QuantizationSurvival(schemes=["full"]), r"`schemes`='full': the check measures what a quantization"),
    (lambda: QuantizationSurvival(schemes=[Deployment("full")]), r"holds Deployment\(precision='full'.*name schemes"),
    (lambda: QuantizationSurvival(schemes=[]), r"`schemes` is empty; name at least one of 'int8', 'nf4'"),
    (lambda: QuantizedEvaluation(precisions=["int9"]), r"'int9'.*'full'"),
    (lambda: QuantizedEvaluation(convention="muze"), r"'muze'.*muse"),
    (lambda: QuantizationSurvival(every_n_steps=0), r"`every_n_steps` must be a positive integer, got 0"),
], ids=["objective", "scheme", "survival-full", "survival-full-deployment", "survival-empty", "precision", "convention",
        "every_n_steps"])
def test_names_and_values_are_checked_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_lora_target_modules_that_match_nothing(tiny_model_dir):
    module = UnlearningModule(tiny_model_dir, lora=LoRA(target_modules=["qq_proj"]))
    with pytest.raises(ValueError, match=r"\['qq_proj'\] match no linear module.*q_proj"):
        module.configure_model()


def test_unknown_yaml_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  objectiv: ga\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(config)])
    assert exit_.value.code == 2 and "objectiv" in capsys.readouterr().err


def test_tokenizer_without_pad_and_eos(tmp_path, tiny_model_dir, text_files):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"neither a pad nor an eos token.*`data.tokenizer`"):
        _setup(forget=text_files["forget"], retain=None, tokenizer=str(tmp_path / "tok"))


def test_output_directory_that_cannot_be_written(tmp_path, tiny_model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    module = UnlearningModule(tiny_model_dir, output_dir=str(blocker / "adapter"))
    with pytest.raises(PermissionError, match=r"`output_dir` '.*a-file/adapter' cannot be written"):
        module.setup("fit")
    assert module.model is None, "caught before the model is loaded"


def test_block_size_that_does_not_divide_a_layer_takes_the_largest_divisor_below_it(tmp_path):
    # Not an error any more: a real model's rows (SmolLM2's 576) must deploy under one config.
    from lit_unlearn.quantization import fake_quantize, quantize

    w = torch.randn(16, 100)
    q = quantize(w, "int4", block_size=48)
    assert q.scheme.block_size == 25 and q.scales.shape == (16, 4)
    assert torch.equal(q.dequantize(), fake_quantize(w, "int4", block_size=25))


def test_non_finite_loss_and_missing_last_checkpoint_have_their_own_tests():
    # Rows tested where the behaviour lives: tests/module/test_module.py (non-finite loss) and
    # tests/cli/test_cli.py (`--ckpt_path last` without a checkpoint).
    from pathlib import Path

    root = Path(__file__).parents[1]
    assert "test_non_finite_loss_stops" in (root / "module" / "test_module.py").read_text()
    assert "test_test_with_ckpt_path_last_and_no_checkpoint_is_refused" in (root / "cli" / "test_cli.py").read_text()
