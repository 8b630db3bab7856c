"""The network's input from a loader's batch: the one place where clips become floats."""
from __future__ import annotations

from typing import Sequence

import torch

from ..ops import KINETICS_MEAN, KINETICS_STD, normalize_clips


def network_input(clips: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool,
                  mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD) -> torch.Tensor:
    """A uint8 (N, T, H, W, 3) batch of VideoDataset clips as the network takes it on
    `device`: copied as uint8 (a quarter of float32's bytes; asynchronous from pinned
    memory), then normalised there in one pass (normalize_clips) to `dtype`, channels_last_3d
    with `channels_last`, else NCTHW. The values equal those of the float clips the
    workers made before (the same float32 arithmetic)."""
    x = normalize_clips(clips.to(device, non_blocking=True), mean, std, dtype)
    return x if channels_last else x.contiguous()
