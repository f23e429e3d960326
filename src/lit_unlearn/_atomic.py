"""Atomic writes: a file or a saved directory is either the old one or the complete new one, never half.

Each writer writes beside its target (``<name>.<pid>.<random>.partial``, its own, so that processes writing
the same file at once — DDP ranks sharing a cache — never write into each other's) and renames it into
place with ``os.replace``, which is atomic on one filesystem: the last complete write wins. A writer that
fails half-way leaves the target as it was and removes its partial output.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_write_text", "atomic_writer"]


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, newline: str | None = None) -> Iterator[io.TextIOBase]:
    """A text file handle whose content replaces ``path`` only when the ``with`` body completes."""
    target = Path(path)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def atomic_directory(directory: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Let ``write(tmp)`` fill a fresh directory, then put it at ``directory`` in place of any old one.

    The old directory is moved aside first and removed once the new one is in place, so ``directory`` holds
    a complete save at every moment but the instant between two renames (when it is absent, never partial).
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    old = target.with_name(target.name + ".old")
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    partial.mkdir()
    try:
        write(partial)
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
        if old.exists():
            shutil.rmtree(old)
    return target
