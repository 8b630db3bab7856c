"""Several processes under ``torchrun``: the process group (NCCL on GPUs, gloo on CPUs) and
the sampler that shards each epoch's permutation over the ranks and resumes mid-epoch."""
from __future__ import annotations

import math
import os
from typing import Iterator, List

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class Dist:
    """This process's place in the run, from torchrun's environment (one process: world 1)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def sum(self, values: List[float]) -> List[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


class EpochSampler(Sampler):
    """This rank's share of a permutation that depends only on (seed, epoch), padded like
    DistributedSampler, with the first ``skip`` items left out (mid-epoch resume)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch, self.skip = epoch, skip

    def indices(self) -> List[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]
        return order[self.rank::self.world][self.skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)
