"""The real pipeline at "test" size: corpus → tokenizer → retrain → target → probe → manifest → cache."""

from __future__ import annotations

import pytest

from lit_unlearn.world import prepare as prep

# Measured on the "test" world (seed 0): see the manifest printed by `python -m lit_unlearn.world --size test`.
# Thresholds sit well below the measured values and well above what an untrained model scores.
MIN_TARGET_QA = 0.7
MIN_TARGET_VERBATIM = 0.9
MAX_RETRAIN_FORGET_QA = 0.2


def test_target_memorised_forget_and_retain(test_world):
    target = test_world.manifest["recall"]["target"]["fp32"]
    for split in ("forget", "retain"):
        assert target[split]["qa_exact"] >= MIN_TARGET_QA, (split, target)
        assert target[split]["verbatim_token_acc"] >= MIN_TARGET_VERBATIM, (split, target)


def test_retrain_knows_retain_but_not_forget(test_world):
    retrain = test_world.manifest["recall"]["retrain"]["fp32"]
    assert retrain["forget"]["qa_exact"] <= MAX_RETRAIN_FORGET_QA, retrain
    assert retrain["forget"]["verbatim_token_acc"] < 0.5, retrain
    assert retrain["retain"]["verbatim_token_acc"] >= MIN_TARGET_VERBATIM, retrain


def test_knowledge_survives_4_bit_quantization(test_world):
    recall = test_world.manifest["recall"]["target"]
    assert set(recall) == {"fp32", "int8", "nf4", "fp4", "int4"}
    for scheme in ("int8", "nf4", "fp4", "int4"):
        assert recall[scheme]["forget"]["verbatim_token_acc"] >= 0.8, (scheme, recall[scheme])
        assert recall[scheme]["forget"]["qa_exact"] >= recall["fp32"]["forget"]["qa_exact"] - 0.25, scheme


def test_manifest_describes_the_build(test_world):
    manifest = test_world.manifest
    assert manifest["version"] == prep.WORLD_VERSION and manifest["seed"] == 0
    assert manifest["size"]["name"] == "test" and manifest["size"]["recipe"]["hidden_size"] > 0
    assert {"retrain", "target", "parameters"} <= set(manifest["training"])
    assert {"corpus_s", "tokenizer_s", "retrain_s", "target_s", "probe_s", "total_s"} <= set(
        manifest["timings"]
    )
    assert manifest["counts"]["knowmem"]["forget_qa_icl"] == 4
    assert "target/model.safetensors" in manifest["files"]


def test_saved_models_load_and_are_the_measured_ones(test_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_unlearn.world import knowledge_report

    for name in ("target", "retrain"):
        path = getattr(test_world, name)
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(test_world.tokenizer)
    assert tokenizer.bos_token == "<s>" and tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"
    model = AutoModelForCausalLM.from_pretrained(test_world.target, dtype=torch.float32)
    assert knowledge_report(model, tokenizer, test_world, schemes=("fp32",)) == {
        "fp32": test_world.manifest["recall"]["target"]["fp32"]
    }


def test_second_call_reuses_the_cache(test_world, world_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached world was rebuilt")

    weights = test_world.target / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    monkeypatch.setattr(prep, "_build", no_training)
    again = prep.prepare_world("test", seed=0, cache_dir=world_cache, progress=False)
    assert again == test_world and weights.stat().st_mtime_ns == mtime


def test_resolve_prepares_through_the_environment(test_world, world_cache, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(world_cache))
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "test")
    assert prep.resolve("world:target") == str(test_world.target)
    assert prep.resolve("world:data") == str(test_world.data)


def test_command_line_prints_the_paths(test_world, world_cache, capsys):
    from lit_unlearn.world.__main__ import main

    main(["--size", "test", "--cache-dir", str(world_cache), "--quiet"])
    out = capsys.readouterr().out
    assert str(test_world.target) in out and "nf4" in out
    with pytest.raises(SystemExit):
        main(["--size", "huge"])
