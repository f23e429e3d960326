"""Results of models that do not change — the target and retrain reference rows — cached on disk.

A reference row depends only on the model's files, the deployment (precision, block size, layers), the
evaluation data and the evaluation settings; every fit and every ``lit-unlearn test`` of a config would
otherwise evaluate the same reference models again at every precision. :class:`ResultsCache` keys a row by
a SHA-256 over all of these and stores it as one JSON file under ``$LIT_UNLEARN_CACHE/eval/`` (written
atomically). Models are fingerprinted by the contents of their weight and config files; a file's hash is
remembered by (path, size, mtime) so a 13 GB model is hashed once. Models that are not a local directory
(a hub id not yet downloaded) are not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_unlearn._atomic import atomic_write_text

__all__ = ["ResultsCache", "data_fingerprint", "model_fingerprint"]

_MODEL_FILES = (".safetensors", ".bin", ".json", ".model", ".txt")
_CHUNK = 1 << 24


def _file_hash(path: Path, memo: dict[str, Any]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


def model_fingerprint(path: str | os.PathLike, memo: dict[str, Any] | None = None) -> str | None:
    """SHA-256 over the names and contents of a local model directory's weight, config and tokenizer
    files; ``None`` for anything that is not a local directory."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        return None
    memo = {} if memo is None else memo
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _MODEL_FILES):
        digest.update(file.name.encode())
        digest.update(_file_hash(file, memo).encode())
    return digest.hexdigest()


def data_fingerprint(data: Any) -> str:
    """SHA-256 of an :class:`~lit_unlearn.evaluation.EvalData`'s items (its source name left out)."""
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.compare}
    return hashlib.sha256(json.dumps(fields, default=_plain, sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


class ResultsCache:
    """Evaluation results on disk, keyed by everything they depend on.

    Args:
        directory: Where the JSON files go; ``None`` is ``$LIT_UNLEARN_CACHE/eval``.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        if directory is None:
            from lit_unlearn.world.prepare import cache_root

            directory = cache_root() / "eval"
        self.directory = Path(directory)
        self._memo_path = self.directory / "file_hashes.json"
        self._memo: dict[str, Any] | None = None
        # A model's fingerprint per path for this object's life: the files do not change within a run.
        self._fingerprints: dict[str, str | None] = {}

    def _memo_dict(self) -> dict[str, Any]:
        if self._memo is None:
            try:
                self._memo = json.loads(self._memo_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._memo = {}
        return self._memo

    def key(self, model_path: str, parts: Mapping[str, Any]) -> str | None:
        """The key of ``model_path``'s results under ``parts`` (precision, data, settings), or ``None``
        when the model cannot be fingerprinted."""
        if model_path not in self._fingerprints:
            memo = self._memo_dict()
            size = len(memo)
            self._fingerprints[model_path] = model_fingerprint(model_path, memo)
            if len(memo) != size:
                self.directory.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self._memo_path, json.dumps(memo, sort_keys=True))
        fingerprint = self._fingerprints[model_path]
        if fingerprint is None:
            return None
        payload = json.dumps({"model": fingerprint, **parts}, default=_plain, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str | None) -> dict[str, float] | None:
        """The cached results of ``key``, or ``None``. Under ``torch.distributed`` every rank gets rank zero's
        answer, so all ranks take the same branch (an evaluation is a collective there)."""
        found = None
        if key is not None:
            try:
                found = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))["results"]
            except (OSError, ValueError, KeyError):
                found = None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = [found]
            dist.broadcast_object_list(shared, src=0)
            found = shared[0]
        return found

    def put(self, key: str | None, results: Mapping[str, float], about: Mapping[str, Any]) -> None:
        if key is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"results": dict(results), "about": dict(about)}
        atomic_write_text(self.directory / f"{key}.json", json.dumps(record, default=_plain, indent=1))
