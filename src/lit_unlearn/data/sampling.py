"""``ResumableSampler``: a training order that is a function of (seed, epoch, pass) and can start mid-epoch.

A plain ``DataLoader(shuffle=True)`` draws its permutation, and its workers' base seed, from the global
torch RNG, which dropout draws from too, and a resumed run replays the interrupted epoch from its first
batch. Both make a resumed fit end elsewhere than an uninterrupted one. This sampler shuffles with its own
generator, seeded from ``(seed, epoch, pass)`` (a *pass* is one run through the data; the shorter of the
forget and retain sets makes several per epoch under ``max_size_cycle``), and ``resume`` makes it skip
what an interrupted run already consumed. It subclasses ``DistributedSampler`` so Lightning leaves it in
place under DDP/FSDP: each rank takes its ``rank::num_replicas`` share of the same permutation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler", "consumed_per_loader"]

_MIX = 1_000_003  # a prime: (seed, epoch, pass) -> one generator seed, distinct for every small triple


class ResumableSampler(DistributedSampler):
    """Indices of one rank's share of ``dataset``, in an order fixed by ``(seed, epoch, pass)``.

    Lightning calls ``set_epoch`` before every epoch (as for any ``DistributedSampler``); each further
    ``iter()`` within the epoch is the next pass and gets a fresh permutation. ``resume(epoch, batches,
    batch_size)`` makes the given epoch start after ``batches`` batches of this sampler, across passes.

    Args:
        dataset: The dataset to sample from (only its length is used).
        shuffle: Permute each pass; ``False`` keeps the dataset's order.
        seed: The order's seed (the run's ``seed_everything`` seed by default, see the DataModule).
        num_replicas: Processes sharing the data (``trainer.world_size``).
        rank: This process's rank (``trainer.global_rank``).
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.passes = 0  # passes started in the current epoch
        self._skip = 0  # indices to drop from the start of the next pass
        self._pending: tuple[int, int, int] | None = None  # (epoch, passes, skip) from `resume`

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.passes, self._skip = 0, 0
        if self._pending is not None:
            pending_epoch, passes, skip = self._pending
            self._pending = None
            if pending_epoch == epoch:
                self.passes, self._skip = passes, skip

    def resume(self, epoch: int, batches: int, batch_size: int, cycle: bool) -> None:
        """Start ``epoch`` after ``batches`` of this sampler's batches were consumed.

        ``cycle``: the loader is re-iterated when exhausted (``max_size_cycle``), so whole passes count;
        otherwise the loader stops after one pass and skipping past its end leaves it empty.
        """
        per_pass = math.ceil(self.num_samples / batch_size)
        if cycle and per_pass:
            passes, within = divmod(batches, per_pass)
        else:
            passes, within = 0, min(batches, per_pass)
        self._pending = (epoch, passes, min(within * batch_size, self.num_samples))

    def _order(self, epoch: int, pass_: int) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(((self.seed * _MIX + epoch) * _MIX + pass_) % (2**63))
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        # As DistributedSampler: pad with the first indices so every rank gets `num_samples`.
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            padding = self.total_size - len(indices)
            indices += (indices * math.ceil(padding / max(len(indices), 1)))[:padding]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self._order(self.epoch, self.passes)
        self.passes += 1
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples


def consumed_per_loader(mode: str, batches: int, lengths: Mapping[str, int]) -> dict[str, int]:
    """Batches each loader of a ``CombinedLoader`` in ``mode`` has yielded after ``batches`` steps.

    ``max_size_cycle``, ``max_size``, ``min_size``: one batch of every loader per step (the exhausted
    ones of ``max_size`` yield nothing further). ``sequential``: the loaders one after the other.
    """
    if mode != "sequential":
        return {name: batches for name in lengths}
    consumed, left = {}, batches
    for name, length in lengths.items():
        consumed[name] = min(left, length)
        left -= consumed[name]
    return consumed
