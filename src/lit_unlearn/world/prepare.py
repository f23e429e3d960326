"""Prepare the toy world once and cache it: corpus, tokenizer, retrain model, target model, manifest.

The cache entry ``cache_root()/world-{WORLD_VERSION}-{size}-seed{seed}`` is built in a temporary
directory next to it and renamed into place, with ``world.json`` (the manifest, holding every file's
size and SHA-256) written last. An entry is used only if its manifest matches the version, size and
seed (the size's entity counts and training recipe included) and every file matches its hash;
anything else (a missing file, a truncated model, a different
version, a crash mid-build) is rebuilt. A file lock serialises builders, so processes that start at
once build the world once and all use that build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_unlearn.world.config import SIZES, get_size

__all__ = [
    "MANIFEST_NAME",
    "RESOLVABLE",
    "WORLD_VERSION",
    "WorldPaths",
    "cache_root",
    "prepare_world",
    "resolve",
    "world_dir",
]

# Bump whenever generation, tokenizer or training changes what a (size, seed) world contains.
WORLD_VERSION = "1"
MANIFEST_NAME = "world.json"
RESOLVABLE = ("target", "retrain", "tokenizer", "data")
# The precisions whose recall the manifest records (the benchmark measures more).
_MANIFEST_PRECISIONS = ("fp32", "int8", "nf4", "fp4", "int4")


@dataclass(frozen=True)
class WorldPaths:
    """Where a prepared world lives.

    Attributes:
        root: The cache entry.
        data: The MUSE-layout dataset repository (``datasets.load_dataset(str(data), "raw", split=...)``).
        tokenizer: The tokenizer (``AutoTokenizer.from_pretrained``).
        target: The target model, trained on forget + retain, with its tokenizer.
        retrain: The retrain model, trained on retain only, with its tokenizer.
        manifest: The parsed ``world.json``: version, size, seed, recipe, timings, recall, file hashes.
    """

    root: Path
    data: Path
    tokenizer: Path
    target: Path
    retrain: Path
    manifest: dict[str, Any]


def cache_root() -> Path:
    """``$LIT_UNLEARN_CACHE`` if set, else ``~/.cache/lit_unlearn``."""
    env = os.environ.get("LIT_UNLEARN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lit_unlearn"


def world_dir(size: str = "default", seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The cache entry of world (``size``, ``seed``) under ``cache_dir`` (default :func:`cache_root`)."""
    return (
        Path(cache_dir if cache_dir is not None else cache_root())
        / f"world-{WORLD_VERSION}-{size}-seed{seed}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def _valid_manifest(root: Path, size: str, seed: int) -> dict[str, Any] | None:
    """The manifest of a complete, intact entry for (``size``, ``seed``); ``None`` for anything else."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        # The whole size (entity counts and training recipe) must match, not just its name.
        if (manifest.get("version"), manifest.get("size"), manifest.get("seed")) != (
            WORLD_VERSION,
            get_size(size).to_dict(),
            seed,
        ):
            return None
        files = manifest["files"]
        for rel, expected in files.items():
            path = root / rel
            if (
                not path.is_file()
                or path.stat().st_size != expected["bytes"]
                or _sha256(path) != expected["sha256"]
            ):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest if files else None


def _paths(root: Path, manifest: dict[str, Any]) -> WorldPaths:
    return WorldPaths(root, root / "data", root / "tokenizer", root / "target", root / "retrain", manifest)


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"[lit_unlearn.world] {message}", file=sys.stderr)


def _build(root: Path, size: str, seed: int, progress: bool) -> dict[str, Any]:
    """Generate, train and measure the world into the empty directory ``root``.

    Returns:
        The manifest's content about the build (counts, training, recall, timings, machine).
    """
    from lit_unlearn.world._threads import on_idle_threads

    with on_idle_threads() as threads:
        content = _build_with(root, size, seed, progress)
    content["machine"]["build_threads"] = threads
    return content


def _build_with(root: Path, size: str, seed: int, progress: bool) -> dict[str, Any]:
    """:func:`_build` at the thread count already chosen."""
    import torch

    from lit_unlearn.world.corpus import RAW_SPLITS, build_corpus, write_dataset
    from lit_unlearn.world.probe import knowledge_report
    from lit_unlearn.world.tokenizer import train_tokenizer
    from lit_unlearn.world.train import TrainingSet, build_model, train

    spec = get_size(size)
    recipe = spec.recipe
    timings: dict[str, float] = {}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()

    corpus = build_corpus(spec, seed)
    write_dataset(corpus, spec, seed, root / "data")
    timings["corpus_s"] = time.perf_counter() - start

    mark = time.perf_counter()
    tokenizer = train_tokenizer(corpus.texts(*RAW_SPLITS), recipe.vocab_size)
    tokenizer.save_pretrained(root / "tokenizer")
    timings["tokenizer_s"] = time.perf_counter() - mark

    def training_set(*splits: str) -> TrainingSet:
        documents, qa_pairs = corpus.training_texts(*splits)
        # Digests up to 3 pairs longer than MUSE's prompt (icl examples + the question).
        return TrainingSet.from_texts(documents, qa_pairs, tokenizer, spec.icl + 3, recipe.seq_len)

    model = build_model(recipe, tokenizer, seed)
    training: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    for name, data, epochs, phase_seed in (
        ("retrain", training_set("retain1", "retain2"), recipe.retrain_epochs, seed * 2 + 1),
        ("target", training_set("forget", "retain1", "retain2"), recipe.target_epochs, seed * 2 + 2),
    ):
        # The target continues from the retrain weights: same recipe, the forget split added.
        stats = train(
            model, data, recipe, epochs, tokenizer.pad_token_id, phase_seed, progress, f"world: {name}"
        )
        stats["tokens_per_epoch"] = data.tokens_per_epoch()
        training[name] = stats
        timings[f"{name}_s"] = stats["seconds"]
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)

    mark = time.perf_counter()
    _say("measuring recall of target and retrain at fp32, 8-bit and 4-bit", progress)
    from transformers import AutoModelForCausalLM

    recall = {
        name: knowledge_report(
            AutoModelForCausalLM.from_pretrained(root / name, dtype=torch.float32),
            tokenizer,
            root / "data",
            _MANIFEST_PRECISIONS,
        )
        for name in ("target", "retrain")
    }
    timings["probe_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start
    return {
        "counts": {
            config: {split: len(rows) for split, rows in splits.items()}
            for config, splits in corpus.records.items()
        },
        "training": training,
        "recall": recall,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
    }


def _write_manifest(root: Path, size: str, seed: int, content: dict[str, Any]) -> None:
    """Write ``world.json``, hashing every other file of ``root``: the last step of a build."""
    manifest = {
        "version": WORLD_VERSION,
        "seed": seed,
        "size": get_size(size).to_dict(),
        **content,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": _file_table(root),
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed`={seed!r} must be a non-negative integer (e.g. 0).")


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) global RNG states are restored on exit."""
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def prepare_world(
    size: str = "default",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> WorldPaths:
    """Build the toy world (size, seed) if it is not cached and intact, and return where it lives.

    The first call generates the corpus, trains the tokenizer, the retrain model and the target model,
    and measures their recall (about 3 minutes on two CPU cores for ``"default"``, seconds for
    ``"test"``); later calls verify the cached files and return at once.

    Args:
        size: A named size (``"default"``, ``"test"``); see :data:`~lit_unlearn.world.SIZES`.
        seed: Seed of the world: entities, facts, texts and model initialisation.
        cache_dir: Directory holding the cache entries; ``None`` uses :func:`cache_root`.
        progress: Show progress bars (training steps and loss) and status lines on stderr.

    Returns:
        The :class:`WorldPaths` of the prepared world.

    Raises:
        ValueError: for an unknown ``size`` or a negative / non-integer ``seed``.

    Example::

        from lit_unlearn.world import prepare_world
        world = prepare_world(size="test")
        print(world.target, world.manifest["recall"]["target"]["nf4"]["forget"])
    """
    get_size(size)
    _check_seed(seed)
    root = world_dir(size, seed, cache_dir)
    manifest = _valid_manifest(root, size, seed)
    if manifest is not None:
        return _paths(root, manifest)

    from filelock import FileLock, Timeout

    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process that is preparing {root}", progress)
        lock.acquire()
    try:
        # Another process may have finished the build while this one waited for the lock.
        manifest = _valid_manifest(root, size, seed)
        if manifest is not None:
            return _paths(root, manifest)
        # Holding the lock, nobody else is building this entry: leftovers are from crashed builds.
        for stale in root.parent.glob(f".{root.name}.*-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if root.exists():
            _say(f"{root} is incomplete, damaged or from another version; rebuilding it", progress)
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.trash-", dir=root.parent))
            os.replace(root, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        _say(f"preparing the toy world (size={size!r}, seed={seed}) in {root}", progress)
        building = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
        try:
            # Building trains models and so draws from the global RNGs; a seeded run must unlearn the same
            # way whether the world was cached or built earlier in the same process.
            with _isolated_rng():
                timings = _build(building, size, seed, progress)
            _write_manifest(building, size, seed, timings)
            os.replace(building, root)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        manifest = _valid_manifest(root, size, seed)
    finally:
        lock.release()
    if manifest is None:
        raise RuntimeError(f"The world just built in {root} does not verify; check the disk ({root.parent}).")
    _say(f"ready in {manifest['timings']['total_s']:.0f} s: {root}", progress)
    return _paths(root, manifest)


def resolve(uri: str) -> str:
    """Local path of ``world:target``, ``world:retrain``, ``world:tokenizer`` or ``world:data``.

    The world is prepared on first use (size ``$LIT_UNLEARN_WORLD_SIZE``, default ``"default"``; seed 0;
    under :func:`cache_root`). Strings that do not start with ``world:`` are returned unchanged.

    Raises:
        ValueError: for ``world:<name>`` with a name not in :data:`RESOLVABLE`.
    """
    if not uri.startswith("world:"):
        return uri
    name = uri.removeprefix("world:")
    if name not in RESOLVABLE:
        choices = ", ".join(f"world:{n}" for n in RESOLVABLE)
        raise ValueError(f"Unknown world path {uri!r}. Choose one of {choices}.")
    size = os.environ.get("LIT_UNLEARN_WORLD_SIZE", "default")
    if size not in SIZES:
        raise ValueError(
            f"$LIT_UNLEARN_WORLD_SIZE={size!r} is not a world size. Set it to one of {sorted(SIZES)} or unset it "
            "(default: 'default')."
        )
    return str(getattr(prepare_world(size=size), name))
