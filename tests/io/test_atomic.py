"""Saves are atomic: a writer that fails half-way leaves the previous files exactly as they were."""

from __future__ import annotations

import pytest

from lit_unlearn._atomic import atomic_directory, atomic_write_text, atomic_writer
from lit_unlearn.evaluation import ResultsTable


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "results.md", "old table\n")
    with pytest.raises(OSError, match="disk full"), atomic_writer(path) as f:
        f.write("half a new ta")
        raise OSError("disk full")
    assert path.read_text() == "old table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"], "no partial file left behind"


def test_two_writers_of_one_file_at_once_both_complete(tmp_path):
    """DDP ranks sharing a cache write the same file at the same moment: each writes its own partial file,
    so neither renames the other's away (the last complete write wins)."""
    path = tmp_path / "file_hashes.json"
    with atomic_writer(path) as first:
        first.write("first")
        with atomic_writer(path) as second:
            second.write("second")
        assert path.read_text() == "second"
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["file_hashes.json"], "no partial file left behind"


def test_a_failed_directory_save_keeps_the_old_save(tmp_path):
    target = tmp_path / "adapter"

    def good(d):
        (d / "adapter_model.safetensors").write_bytes(b"v1")

    def dies_half_way(d):
        (d / "adapter_model.safetensors").write_bytes(b"v2-partial")
        raise OSError("killed")

    atomic_directory(target, good)
    with pytest.raises(OSError, match="killed"):
        atomic_directory(target, dies_half_way)
    assert (target / "adapter_model.safetensors").read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    atomic_directory(target, lambda d: (d / "adapter_model.safetensors").write_bytes(b"v3"))
    assert (target / "adapter_model.safetensors").read_bytes() == b"v3"


def test_results_table_write_is_atomic(tmp_path, monkeypatch):
    table = ResultsTable()
    table.add("npo_gdr", "nf4", {"verbmem_forget": 1.0, "knowmem_forget": 2.0, "privleak": 3.0,
                                 "knowmem_retain": 4.0, "auc": 0.5})
    paths = table.write(tmp_path)
    before = {k: p.read_text() for k, p in paths.items()}
    table.add("npo_gdr", "fp4", {"verbmem_forget": 9.0, "knowmem_forget": 9.0, "privleak": 9.0,
                                 "knowmem_retain": 9.0, "auc": 0.9})

    import json

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(json, "dumps", full_disk)
    with pytest.raises(OSError, match="No space left"):
        table.write(tmp_path)
    assert paths["json"].read_text() == before["json"], "the old json is intact"
    assert not list(tmp_path.glob("*.partial"))


def test_module_save_failing_half_way_keeps_the_previous_adapter(tiny_model_dir, tmp_path, monkeypatch):
    from lit_unlearn import LoRA, UnlearningModule

    module = UnlearningModule(tiny_model_dir, objective="ga", lora=LoRA(r=2, alpha=4, dropout=0.0))
    module.configure_model()
    saved = module.save_pretrained(tmp_path / "adapter")
    weights = (saved / "adapter_model.safetensors").read_bytes()

    def interrupted(directory, **kwargs):
        (directory / "adapter_model.safetensors").write_bytes(b"truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(module.model, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.save_pretrained(tmp_path / "adapter")
    assert (saved / "adapter_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
