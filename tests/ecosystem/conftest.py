"""Fixtures of the ecosystem tests: a tiny MUSE-layout dataset, one intra-op thread, W&B runs closed."""

from __future__ import annotations

import pytest

from tests.evaluation.muse_fixtures import write_muse_dir


@pytest.fixture(scope="session")
def muse_dir(tmp_path_factory) -> str:
    """A tiny local dataset directory in MUSE's layout."""
    return str(write_muse_dir(tmp_path_factory.mktemp("muse")))


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models do microseconds of work per op; on a shared 2-core machine, OpenMP threads spinning on
    # each other make them far slower than one thread.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def wandb_offline(monkeypatch):
    """Offline W&B for one test; the run it opens is finished afterwards, so no later test reuses it."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    if wandb.run is not None:
        wandb.finish()
