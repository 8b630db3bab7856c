"""What both network layouts share: the layout the activations run in and the check of the
blocks-per-stage argument."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor


def to_working_layout(x: Tensor, channels_last: Optional[bool]) -> Tensor:
    """The clips in the layout the network runs in: channels_last_3d when asked, or, by
    default (None), when they are on a CUDA device."""
    if channels_last if channels_last is not None else x.is_cuda:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def check_layer_sizes(layer_sizes: Sequence[int]) -> List[int]:
    sizes = list(layer_sizes)
    if len(sizes) != 4 or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"expected layer_sizes to be 4 positive ints (blocks per stage), got {layer_sizes!r}")
    return sizes
