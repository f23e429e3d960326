"""Intra-op threads for the world's tiny models: the idle CPUs, at least one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def idle_threads(requested: int) -> int:
    """As many of ``requested`` threads as there are idle CPUs (by the 1-minute load average), at least one.

    The world's model is so small that every op takes milliseconds; when other processes keep the
    cores busy, each multi-threaded op waits for a descheduled worker. Measured on two shared cores at
    load ~3: one thread trained 3x faster than two; on idle cores two threads are ~1.8x faster than one.
    """
    if not hasattr(os, "getloadavg"):
        return requested
    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    return max(1, min(requested, round(idle)))


@contextmanager
def on_idle_threads() -> Iterator[int]:
    """Run the block with :func:`idle_threads` of torch's current thread count; restore it afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(idle_threads(before))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
