"""Fixtures for the toy-world tests: one real "test"-size world per session, in a temporary cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    """A cache directory holding one prepared "test"-size world (seed 0)."""
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture(scope="session")
def test_world(world_cache):
    """The prepared "test"-size world: corpus, tokenizer, retrain and target models, manifest."""
    from lit_unlearn.world import prepare_world

    return prepare_world(size="test", seed=0, cache_dir=world_cache, progress=False)
