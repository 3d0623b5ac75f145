"""The step sampler: the data order as a pure function of (seed, epoch), so a resumed run replays the batches an
uninterrupted one would have seen, whatever the number of processes' DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepSampler(Sampler[tuple[int, int]]):
    """Yields this rank's `(epoch, index)` items for steps `start_step .. total_steps-1`, in order.

    Global step s reads rows `pos*B .. (pos+1)*B` of the permutation of epoch `s // steps_per_epoch` (seeded by
    (seed, epoch)); rank r takes its contiguous slice of that global batch. Tail samples that do not fill a batch are
    left out of that epoch (a contrastive batch must be full) and come back in another order next epoch.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int, start: int, total: int):
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.start, self.total = seed, start, total
        self.steps_per_epoch = n // global_batch
        self.local_batch = global_batch // world_size

    def __len__(self) -> int:
        return (self.total - self.start) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            lo = pos * self.global_batch + self.rank * self.local_batch
            for i in perm[lo : lo + self.local_batch].tolist():
                yield epoch, i
