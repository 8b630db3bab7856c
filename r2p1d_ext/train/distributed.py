"""Several processes under ``torchrun``: the process group (NCCL on GPUs, gloo on CPUs), the
few collectives the loop uses, the sampler that shards each epoch's permutation over the
ranks and resumes mid-epoch, and the batches of whole videos that shard evaluation."""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, List, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class Dist:
    """This process's place in the run, from torchrun's environment (one process: world 1)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # Which start of the job this is: torchrun counts the restarts of its workers.
        self.restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def restart_warning(self) -> str:
        """'' or why torchrun's restarts may fail to connect: with its default shared
        rendezvous store, a restarted worker can read the previous start's addresses from
        it (the store is not new per start, whatever PyTorch's comment says), and the
        restart dies with "Gloo connectFullMesh failed ... Connection refused" (NCCL:
        "socketPollConnect ... Connection refused"). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
        set for torchrun itself, gives every start a store of its own (docs/training.md)."""
        restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
        if restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            return ("torchrun --max-restarts with its shared rendezvous store: a restart may fail to connect; "
                    "run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment (docs/training.md)")
        return ""

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sums over the ranks, in float64 (every rank gets the same numbers;
        a NaN or Inf on any rank makes its element non-finite everywhere)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank, as DDP gives them
        at its next forward: each rank updated its own from its own clips since."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def broadcast(self, obj: Any, src: int) -> Any:
        """Rank `src`'s `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]


class EpochSampler(Sampler):
    """This rank's share of a permutation that depends only on (seed, epoch), padded like
    DistributedSampler, with the first ``skip`` items left out (mid-epoch resume). It yields
    ``(index, epoch)`` pairs: the dataset seeds each clip's augmentation with its epoch, and
    a persistent DataLoader worker holds a copy of the dataset made at the first epoch."""

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

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        return iter([(i, epoch) for i in self.indices()])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


class VideoBatches(Sampler):
    """Evaluation batches of whole videos (every clip of a video in one batch, in clip order):
    batch b holds videos [b*v, (b+1)*v), v = max(1, batch_size // clips_per_video), and rank r
    takes the batches b with b % world == r. One process (world 1) takes them all, in the same
    batches: each clip meets the same batch-mates on any number of ranks, so its scores are
    the same to the bit, and each video's clips are averaged on one rank in one order."""

    def __init__(self, videos: int, clips_per_video: int, batch_size: int, rank: int = 0, world: int = 1):
        self.videos, self.clips = videos, clips_per_video
        self.per_batch = max(1, batch_size // clips_per_video)
        self.rank, self.world = rank, world

    def _batches(self) -> List[List[int]]:
        starts = range(0, self.videos, self.per_batch)[self.rank::self.world]
        return [list(range(v * self.clips, min(v + self.per_batch, self.videos) * self.clips)) for v in starts]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
