"""Caching of prepared worlds: reuse, detection of partial/damaged/stale entries, concurrent builders.

A fake builder stands in for corpus generation and training here (the real build is exercised once,
in test_world.py), so these tests check the cache logic in milliseconds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from lit_unlearn.world import prepare as prep


def fake_build(root: Path, size: str, seed: int, progress: bool, delay: float = 0.0) -> dict:
    """Write a minimal world and count the build in ``<cache>/builds.log``."""
    for name in ("data", "tokenizer", "target", "retrain"):
        (root / name).mkdir()
        (root / name / "file.bin").write_bytes(os.urandom(64))
    time.sleep(delay)
    with open(root.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    return {"timings": {"total_s": delay}, "recall": {}}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(prep, "_build", fake_build)


def _builds(cache: Path) -> int:
    log = cache / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_builds_once_then_reuses(tmp_path, fake):
    first = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert _builds(tmp_path) == 1
    assert first.root == tmp_path / f"world-{prep.WORLD_VERSION}-test-seed0"
    assert (first.root / "world.json").is_file() and first.manifest["version"] == prep.WORLD_VERSION
    second = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert _builds(tmp_path) == 1 and second == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "building" in p.name] == []


@pytest.mark.parametrize(
    "damage", ["truncate", "delete_file", "delete_manifest", "other_version", "garbage_manifest"]
)
def test_damaged_entry_is_rebuilt(tmp_path, fake, damage):
    world = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    manifest_path = world.root / "world.json"
    if damage == "truncate":
        (world.target / "file.bin").write_bytes(b"short")
    elif damage == "delete_file":
        (world.retrain / "file.bin").unlink()
    elif damage == "delete_manifest":  # as if the build died before its last step
        manifest_path.unlink()
    elif damage == "other_version":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps(manifest | {"version": "0"}))
    else:
        manifest_path.write_text("{not json")
    rebuilt = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert _builds(tmp_path) == 2
    assert rebuilt.root == world.root and prep._valid_manifest(world.root, "test", 0) is not None


def test_changed_recipe_is_rebuilt(tmp_path, fake, monkeypatch):
    import dataclasses

    from lit_unlearn.world import config

    prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    changed = dataclasses.replace(config.SIZES["test"], forget=9)
    monkeypatch.setitem(config.SIZES, "test", changed)
    world = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert _builds(tmp_path) == 2 and world.manifest["size"]["forget"] == 9


def test_same_size_bytes_but_different_content_is_detected(tmp_path, fake):
    world = prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    path = world.target / "file.bin"
    path.write_bytes(bytes(len(path.read_bytes())))
    assert prep._valid_manifest(world.root, "test", 0) is None


def test_crashed_build_leaves_nothing_and_stale_temp_dirs_are_cleared(tmp_path, monkeypatch):
    def broken(root, size, seed, progress):
        (root / "data").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_build", broken)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # A builder killed outright leaves its temp dir; the next builder removes it.
    stale = tmp_path / f".world-{prep.WORLD_VERSION}-test-seed0.building-dead"
    stale.mkdir()
    monkeypatch.setattr(prep, "_build", fake_build)
    prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    assert not stale.exists()


def _prepare_in_child(cache: str, delay: float) -> dict:
    from lit_unlearn.world import prepare as child_prep

    child_prep._build = lambda root, size, seed, progress: fake_build(root, size, seed, progress, delay)
    # Start both preparations together (a file barrier), so the second one meets the first one's lock.
    Path(cache, f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(Path(cache).glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    manifest = child_prep.prepare_world("test", cache_dir=cache, progress=False).manifest
    return {"manifest": manifest, "started": started, "finished": time.monotonic()}


def test_concurrent_preparation_builds_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_prepare_in_child, [(str(tmp_path), 1.0), (str(tmp_path), 1.0)])
    # The calls overlapped: each started before the other had finished.
    assert max(r["started"] for r in results) < min(r["finished"] for r in results)
    assert _builds(tmp_path) == 1
    assert results[0]["manifest"] == results[1]["manifest"]
    assert prep._valid_manifest(prep.world_dir("test", 0, tmp_path), "test", 0) == results[0]["manifest"]


def test_cache_root_and_resolve(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path))
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "test")
    assert prep.cache_root() == tmp_path
    world = prep.prepare_world("test", progress=False)
    assert world.root.parent == tmp_path
    for name in prep.RESOLVABLE:
        assert prep.resolve(f"world:{name}") == str(getattr(world, name))
    assert prep.resolve("muse-bench/MUSE-News") == "muse-bench/MUSE-News"
    with pytest.raises(
        ValueError, match=r"'world:model'.*world:target, world:retrain, world:tokenizer, world:data"
    ):
        prep.resolve("world:model")
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "tiny")
    with pytest.raises(ValueError, match=r"\$LIT_UNLEARN_WORLD_SIZE='tiny'.*\['default', 'narrow', 'test', 'wide', 'wider'\]"):
        prep.resolve("world:target")
    monkeypatch.delenv("LIT_UNLEARN_CACHE")
    assert prep.cache_root() == Path.home() / ".cache" / "lit_unlearn"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"`size`='large'"):
        prep.prepare_world("large", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`seed`=-1"):
        prep.prepare_world("test", seed=-1, cache_dir=tmp_path)


def test_building_leaves_the_global_rngs_as_it_found_them(tmp_path, monkeypatch):
    # A seeded fit must initialise and shuffle the same way whether the world was cached or built first.
    import random

    import numpy as np
    import torch

    def drawing_build(root, size, seed, progress):
        torch.manual_seed(seed)
        torch.randn(3), random.random(), np.random.rand()
        return fake_build(root, size, seed, progress)

    monkeypatch.setattr(prep, "_build", drawing_build)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = torch.randn(4), random.random(), np.random.rand()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    prep.prepare_world("test", cache_dir=tmp_path, progress=False)
    got = torch.randn(4), random.random(), np.random.rand()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.slow
def test_two_fits_started_at_once_on_a_fresh_cache_build_the_world_once(tmp_path):
    """End to end: two `lit-unlearn fit` processes on an empty cache; the lock lets one build, the other
    waits, and both train on the same world."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LIT_UNLEARN_CACHE": str(tmp_path / "cache"), "LIT_UNLEARN_WORLD_SIZE": "test"}
    procs = []
    for name in ("a", "b"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            f"""trainer: {{accelerator: cpu, max_steps: 2, logger: false, enable_progress_bar: false,
  enable_checkpointing: false, default_root_dir: {tmp_path / name}}}
model: {{model_name_or_path: "world:target", objective: ga_gdr, lora: {{r: 2, alpha: 4, dropout: 0.0}}}}
data:
  forget: {{path: "world:data", name: raw, split: forget}}
  retain: {{path: "world:data", name: raw, split: retain1}}
  max_length: 32
  batch_size: 2
"""
        )
        args = [sys.executable, "-c", "from lit_unlearn.cli import main; main()", "fit", "-c", str(config)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(out.count("preparing the toy world") for out in outputs) == 1, "built once"
    for name in ("a", "b"):
        assert (tmp_path / name / "adapter" / "adapter_model.safetensors").is_file()
