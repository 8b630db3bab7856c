"""The pure-PyTorch (2+1)D block: the oracle every kernel and the fused module are tested
against, and the unfused baseline of the benchmarks. Its parameter and buffer names are
the fused module's, so state_dicts load both ways."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._args import block_config


class SpatioTemporalConv(nn.Module):
    """spatial conv (1,kh,kw) -> BatchNorm3d -> ReLU -> temporal conv (kt,1,1), unfused.

    Arguments are those of the fused r2p1d_ext.SpatioTemporalConv (and nn.Conv3d's first ones).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, mid_channels: Optional[int] = None):
        super().__init__()
        kernel, stride, padding, mid = block_config(in_channels, out_channels, kernel_size,
                                                    stride, padding, mid_channels)
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel_size, self.stride, self.padding = kernel, stride, padding
        self.spatial_conv = nn.Conv3d(in_channels, mid, (1, kernel[1], kernel[2]),
                                      stride=(1, stride[1], stride[2]),
                                      padding=(0, padding[1], padding[2]), bias=bias)
        self.bn = nn.BatchNorm3d(mid)
        self.relu = nn.ReLU()
        self.temporal_conv = nn.Conv3d(mid, out_channels, (kernel[0], 1, 1),
                                       stride=(stride[0], 1, 1), padding=(padding[0], 0, 0),
                                       bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


def spatio_temporal_conv(x: Tensor, spatial_weight: Tensor, spatial_bias: Optional[Tensor],
                         bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                         running_mean: Optional[Tensor], running_var: Optional[Tensor],
                         temporal_weight: Tensor, temporal_bias: Optional[Tensor], stride, padding,
                         training: bool, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """The block as one function of its tensors (stride/padding are (t, h, w) triples)."""
    y = F.conv3d(x, spatial_weight, spatial_bias, (1, stride[1], stride[2]),
                 (0, padding[1], padding[2]))
    z = F.relu(F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum,
                            eps))
    return F.conv3d(z, temporal_weight, temporal_bias, (stride[0], 1, 1), (padding[0], 0, 0))
