"""Fixtures of the evaluation tests; the builders live in ``muse_fixtures`` so tests can import them."""

from __future__ import annotations

import pytest

from .muse_fixtures import build_llama, build_llama_tokenizer, sentences, write_muse_dir


@pytest.fixture(scope="session")
def muse_dir(tmp_path_factory) -> str:
    """A tiny local dataset directory in MUSE's layout."""
    return str(write_muse_dir(tmp_path_factory.mktemp("muse")))


@pytest.fixture(scope="session")
def tokenizer():
    return build_llama_tokenizer(sentences(300, seed=0))


@pytest.fixture()
def llama(tokenizer):
    return build_llama(len(tokenizer))


