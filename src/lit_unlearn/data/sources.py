"""Where forget, retain and evaluation texts come from: text files, JSONL, or a Hugging Face dataset.

One loader serves a user's own files, the MUSE benchmark (``muse-bench/MUSE-News``) and the
embedded toy world, which is written to disk in MUSE's layout (``world:data``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TextSource", "load_records", "load_split", "load_texts", "resolve_path"]

_TEXT_SUFFIXES = (".txt", ".md")
_JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass
class TextSource:
    """A set of texts.

    Args:
        path: A ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file (one object per
            line), a directory of ``.txt`` files (one document per file), a Hugging Face dataset
            (a hub id such as ``muse-bench/MUSE-News`` or a local dataset directory), or
            ``world:data`` for the embedded toy world.
        name: Dataset configuration, for Hugging Face datasets (MUSE: ``raw``, ``verbmem``, ...).
        split: Dataset split, for Hugging Face datasets (MUSE ``raw``: ``forget``, ``retain1``, ...).
        column: Field holding the text (JSONL and datasets).
    """

    path: str
    name: str | None = None
    split: str | None = None
    column: str = "text"

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("`path` of a text source is empty. Give a file, a directory or a dataset id.")

    def __str__(self) -> str:
        parts = [self.path] + [p for p in (self.name, self.split) if p]
        return ":".join(parts) if len(parts) == 1 else f"{self.path} [{'/'.join(parts[1:])}]"


def resolve_path(path: str) -> str:
    """``world:<name>`` → the prepared toy world's local path (built on first use); ``real:<name>`` → the
    real model's file or its benchmark (:mod:`lit_unlearn.real`); anything else unchanged."""
    if path.startswith("world:"):
        from lit_unlearn.world import resolve

        return resolve(path)
    if path.startswith("real:"):
        from lit_unlearn.real.paths import resolve as resolve_real

        return resolve_real(path)
    return path


def _content_cache_dir(directory: Path) -> Path:
    # datasets 5 caches a local dataset directory under its folder name and relative file names only,
    # so two directories called `data` in MUSE layout (every toy world, most local MUSE copies) share
    # one cache entry and the second one loads the first one's rows. A cache keyed by the absolute
    # path and each file's size and modification time cannot be stale.
    import datasets

    digest = hashlib.sha256(str(directory.resolve()).encode())
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.parts):
        stat = file.stat()
        digest.update(f"{file.relative_to(directory)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(datasets.config.HF_DATASETS_CACHE) / "lit_unlearn" / digest.hexdigest()[:20]


def _looks_local(path: str) -> bool:
    # Hub ids are "owner/name"; a path that starts like a filesystem path is meant as one.
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in (*_TEXT_SUFFIXES, *_JSONL_SUFFIXES)


def load_split(path: str, name: str | None, split: str) -> Any:
    """Load one split of a Hugging Face dataset (hub id, local dataset directory or ``world:data``).

    Raises:
        FileNotFoundError: if ``path`` is written as a local path and does not exist.
        ValueError: if the configuration or split does not exist; the message lists what does.
    """
    import datasets

    path = resolve_path(path)
    local = Path(path).expanduser()
    if _looks_local(path) and not local.exists():
        raise FileNotFoundError(
            f"Data path {path!r} does not exist. Give an existing dataset directory (MUSE layout), a .txt/.jsonl "
            "file, a Hugging Face dataset id (owner/name) or world:data."
        )
    cache_dir = str(_content_cache_dir(local)) if local.is_dir() else None
    try:
        return datasets.load_dataset(str(local) if local.is_dir() else path, name, split=split, cache_dir=cache_dir)
    except ValueError as err:
        # datasets phrases unknown configs/splits in several ways; name what we asked for and what exists.
        try:
            configs = datasets.get_dataset_config_names(path)
        except Exception:  # noqa: BLE001 - best effort listing for the message
            configs = []
        raise ValueError(
            f"Could not load split {split!r} of config {name!r} from dataset {path!r}: {err}. "
            f"Available configs: {configs or 'unknown'}."
        ) from err


def load_records(source: TextSource) -> list[dict[str, Any]]:
    """All records of ``source`` as dictionaries (for text files: ``{"text": document}``).

    Raises:
        FileNotFoundError: if a local path does not exist and is not a dataset id.
        ValueError: if the source is empty or a record lacks ``source.column``.
    """
    path = resolve_path(source.path)
    local = Path(path).expanduser()
    if local.is_file() and local.suffix in _TEXT_SUFFIXES:
        docs = [d.strip() for d in local.read_text(encoding="utf-8").split("\n\n")]
        records = [{"text": d} for d in docs if d]
    elif local.is_file() and local.suffix in _JSONL_SUFFIXES:
        records = _read_jsonl(local)
    elif local.is_dir() and source.split is None:
        files = sorted(p for p in local.iterdir() if p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise ValueError(
                f"Directory {str(local)!r} holds no .txt files. Put one document per .txt file there, or give "
                "`split` (and `name`) to read it as a Hugging Face dataset directory."
            )
        records = [{"text": p.read_text(encoding="utf-8").strip()} for p in files]
    elif local.is_file():
        raise ValueError(
            f"Unsupported file type {local.suffix!r} for {str(local)!r}. Use .txt (documents separated by blank "
            "lines) or .jsonl (one JSON object per line)."
        )
    elif source.split is not None:
        records = list(load_split(path, source.name, source.split))
    else:
        raise FileNotFoundError(
            f"Data path {path!r} does not exist. Give an existing .txt/.jsonl file or directory, or a Hugging Face "
            "dataset id together with `split` (and `name`), e.g. path: muse-bench/MUSE-News, name: raw, split: forget."
        )
    if not records:
        raise ValueError(f"Text source {source} is empty: it holds no documents. Point it at non-empty data.")
    if source.column not in records[0]:
        raise ValueError(
            f"Text source {source} has no field {source.column!r}; its fields are {sorted(records[0])}. "
            "Set `column` to the field holding the text."
        )
    return records


def load_texts(source: TextSource) -> list[str]:
    """The non-empty texts of ``source``, in order.

    Raises:
        ValueError: if no non-empty text remains.
    """
    texts = [str(r[source.column]) for r in load_records(source) if r.get(source.column)]
    if not texts:
        raise ValueError(f"Text source {source} is empty: every {source.column!r} field is blank.")
    return texts


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(path)!r} line {lineno} is not valid JSON ({err.msg}).") from err
    return records
