"""The embedded toy world: fictional facts a small Llama has memorised, in MUSE's layout.

A deterministic generator invents people, places, organisations and events, writes news-like
documents and question/answer pairs about them as a local Hugging Face dataset in the layout of
``muse-bench/MUSE-News``, trains a byte-level BPE tokenizer, a *retrain* model (retain splits only) and
a *target* model (forget + retain), and caches everything. Unlearning the target and measuring it at
full precision and after 4-bit quantization is then an honest, minutes-long experiment on a laptop.

Example::

    from lit_unlearn.world import prepare_world, resolve
    world = prepare_world()                 # built on first use (~3 min on 2 cores), then cached
    resolve("world:target")                 # the same path as str(world.target)

    import datasets
    forget = datasets.load_dataset(str(world.data), "raw", split="forget")
"""

from __future__ import annotations

import importlib
from typing import Any

from lit_unlearn.world.config import SIZES, TrainRecipe, WorldSize, get_size
from lit_unlearn.world.prepare import (
    RESOLVABLE,
    WORLD_VERSION,
    WorldPaths,
    cache_root,
    prepare_world,
    resolve,
    world_dir,
)

# The probe needs torch and transformers; resolving a path should not.
_LAZY = {
    "PRECISIONS": "lit_unlearn.world.probe",
    "knowledge_report": "lit_unlearn.world.probe",
    "world_report": "lit_unlearn.world.probe",
}

__all__ = [
    "PRECISIONS",
    "RESOLVABLE",
    "SIZES",
    "WORLD_VERSION",
    "TrainRecipe",
    "WorldPaths",
    "WorldSize",
    "cache_root",
    "get_size",
    "knowledge_report",
    "prepare_world",
    "resolve",
    "world_dir",
    "world_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_unlearn.world' has no attribute {name!r}")
