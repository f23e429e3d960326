"""Streaming machinery shared by the codecs: chunks of whole groups, reusable buffers, the codec protocol.

Every supported format gives one scale to each run ("group") of consecutive elements of the flattened
weight: nf4/fp4 blocks, RTN groups along the input dimension, LLM.int8 rows. A weight is therefore
processed as a sequence of chunks of whole groups, each viewed as a ``(groups, group_len)`` matrix.
Chunks are small enough that the twenty-odd elementwise passes of a survival check run from cache, and
the buffers behind them are allocated once per call, so peak extra memory does not grow with the weight.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

# 2^19 elements = 2 MiB per fp32 buffer, the fastest of 2^15 … 2^21 measured on a 2-core EPYC: smaller
# chunks pay Python and dispatch overhead on each of ~30 ops, larger ones push the ~15 buffers of a
# survival check out of cache. The buffers then total about a third of a 2048 x 8192 fp32 matrix.
CPU_CHUNK_ELEMENTS = 1 << 19
# Accelerators want large launches rather than cache blocking; 2^22 keeps the ~15 buffers near 250 MiB.
DEVICE_CHUNK_ELEMENTS = 1 << 22
# Counts are summed as fp32 within a chunk, exact up to 2^24; no real weight has longer groups.
MAX_GROUP_ELEMENTS = 1 << 24


class Chunk(NamedTuple):
    """Elements ``[start, stop)`` of the flattened weight: ``groups`` whole groups of ``group_len``.

    ``first_group`` indexes the flat scales tensor; ``tail`` marks nf4/fp4's shorter last block, which
    bitsandbytes scales with a slightly different formula.
    """

    start: int
    stop: int
    first_group: int
    groups: int
    group_len: int
    tail: bool

    @property
    def groups_slice(self) -> slice:
        return slice(self.first_group, self.first_group + self.groups)


def iter_chunks(numel: int, group_len: int, max_elements: int) -> Iterator[Chunk]:
    """Chunks of whole groups covering ``numel`` elements; a remainder becomes one final ``tail`` chunk."""
    full_groups = numel // group_len
    per_chunk = max(1, max_elements // group_len)
    for g0 in range(0, full_groups, per_chunk):
        g1 = min(full_groups, g0 + per_chunk)
        yield Chunk(g0 * group_len, g1 * group_len, g0, g1 - g0, group_len, False)
    rem = numel - full_groups * group_len
    if rem:
        yield Chunk(full_groups * group_len, numel, full_groups, 1, rem, True)


# Workspaces of weights up to this size are kept for reuse (with ~15 fp32 buffers, 4 MiB each at most).
_REUSED_MAX_ELEMENTS = 1 << 16
_REUSED_MAX_COUNT = 16
_reused = threading.local()


class Workspace:
    """Flat scratch buffers reused across chunks, one per name; each sized for the largest chunk."""

    def __init__(self, numel: int, group_len: int, device: torch.device) -> None:
        if group_len > MAX_GROUP_ELEMENTS:
            raise ValueError(
                f"Groups of {group_len} elements exceed the supported {MAX_GROUP_ELEMENTS}; pass a smaller "
                "`block_size`."
            )
        per_chunk = CPU_CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS
        # A chunk holds at least one group, so a group longer than the chunk size sets the capacity.
        self.capacity = max(1, min(numel, max(group_len, per_chunk // group_len * group_len)))
        self.device = device
        self._buffers: dict[str, Tensor] = {}
        # Views are cached too: all chunks but the last share a shape, and a view costs a dispatch.
        self._views: dict[tuple[str, torch.dtype, int, int], Tensor] = {}

    @classmethod
    def reused(cls, numel: int, group_len: int, device: torch.device) -> Workspace:
        """A workspace for a small CPU weight, kept per thread and reused by later calls of the same size.

        A check of a small layer is dominated by allocating and viewing its dozen buffers; the callback
        checks the same layers again and again. Large weights and accelerators get a fresh workspace, so
        nothing weight-sized stays allocated between calls.
        """
        if device.type != "cpu" or numel > _REUSED_MAX_ELEMENTS:
            return cls(numel, group_len, device)
        cache = _reused.__dict__.setdefault("workspaces", {})
        key = (numel, group_len)
        workspace = cache.pop(key, None) or cls(numel, group_len, device)
        cache[key] = workspace  # most recently used last
        while len(cache) > _REUSED_MAX_COUNT:
            del cache[next(iter(cache))]
        return workspace

    def chunks(self, numel: int, group_len: int) -> Iterator[Chunk]:
        return iter_chunks(numel, group_len, self.capacity)

    def flat(self, name: str, dtype: torch.dtype, n: int) -> Tensor:
        """The first ``n`` elements (at most ``capacity``) of buffer ``name`` (contents undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype:
            buf = torch.empty(self.capacity, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:n]

    def get(self, name: str, dtype: torch.dtype, chunk: Chunk) -> Tensor:
        """A ``(chunk.groups, chunk.group_len)`` view of buffer ``name`` (contents undefined)."""
        key = (name, dtype, chunk.groups, chunk.group_len)
        view = self._views.get(key)
        if view is None:
            view = self.flat(name, dtype, chunk.stop - chunk.start).view(chunk.groups, chunk.group_len)
            self._views[key] = view
        return view


def check_finite(scales: Tensor, chunk: Chunk) -> None:
    """Raise if a group's scale is NaN or inf (max propagates NaN, so one bad weight is enough)."""
    # Checked before any table lookup: a NaN would otherwise become an out-of-range index.
    if not bool(torch.isfinite(scales).all()):
        raise_not_finite(chunk)


def raise_not_finite(chunk: Chunk) -> None:
    raise ValueError(
        f"The weight has NaN or inf values among flattened elements [{chunk.start}, {chunk.stop}) "
        "(for 'int8', values beyond fp16's range count too); quantizing them is undefined. "
        "Check the run for divergence."
    )


class Encoded(NamedTuple):
    """One chunk in a codec's working representation.

    ``codes``: ``(groups, group_len)``, a codec-specific index or integer-valued float; ``scales`` and
    ``zero_points``: ``(groups,)`` fp32 (zero points ``None`` for symmetric formats); ``tables``: what
    the codes index, for table-driven codecs.
    """

    codes: Tensor
    scales: Tensor
    zero_points: Tensor | None
    tables: Any = None


class Codec(ABC):
    """How one family quantizes ``(groups, group_len)`` fp32 chunks; implemented in ``bnb4`` and ``rtn``."""

    codes_dtype: torch.dtype

    @abstractmethod
    def group_len(self, shape: torch.Size) -> int:
        """Elements per group for a weight of ``shape`` (raises if the shape does not fit)."""

    @abstractmethod
    def scales_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Shape of the stored scales (and zero points)."""

    def prepare(self, x: Tensor, ws: Workspace, chunk: Chunk) -> Tensor:
        """The values the format actually quantizes (LLM.int8 first rounds weights to fp16)."""
        return x

    @abstractmethod
    def encode(self, x: Tensor, ws: Workspace, slot: str, chunk: Chunk) -> Encoded:
        """Quantize a chunk; buffers named after ``slot`` stay valid until the next encode of that slot."""

    @abstractmethod
    def load(self, stored: Tensor, scales: Tensor, zero_points: Tensor | None, ws: Workspace, slot: str,
             chunk: Chunk) -> Encoded:
        """Stored codes (``codes_dtype``) and group parameters of a chunk → working representation."""

    @abstractmethod
    def store(self, enc: Encoded, out: Tensor) -> None:
        """Write the stored codes (``codes_dtype``) into ``out``."""

    @abstractmethod
    def values(self, enc: Encoded, ws: Workspace, slot: str, chunk: Chunk) -> Tensor:
        """Per-element fp32 values, one distinct value per code, that :meth:`scale` turns into ``Q(w)``.

        Two elements of a group have equal codes exactly when their values are equal, so code changes
        are counted by subtracting values. May return (and let :meth:`scale` overwrite) ``enc.codes``.
        """

    @abstractmethod
    def scale(self, values: Tensor, enc: Encoded) -> Tensor:
        """In place: :meth:`values` → dequantized fp32 ``Q(w)``."""

    @abstractmethod
    def decode(self, enc: Encoded, out: Tensor) -> Tensor:
        """Bit-exact dequantized fp32 values written into ``out``."""

    @abstractmethod
    def half_step(self, enc: Encoded, ws: Workspace, chunk: Chunk) -> Tensor:
        """Half the local quantization step at each code, broadcastable to ``(groups, group_len)``."""
