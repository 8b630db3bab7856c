"""The pure-PyTorch oracle: the (2+1)D block (a module whose parameter and buffer names are
the fused module's, so state_dicts load both ways; the unfused baseline of the benchmarks),
and one reference function per r2p1d op (same arguments and results), against which every
kernel, the module and the networks are tested."""
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


# ---------------------------------------------------------------------------- the ops
# One reference per r2p1d op (r2p1d_ext/ops.py): the same arguments and results, in plain
# PyTorch and differentiable, so that the backward ops are checked against autograd of
# these. The tests call them in float64.
def spatial_conv_stats(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding):
    """y = conv3d(x, weight, bias, stride (1, *stride), padding (0, *padding)) and the
    per-channel batch mean and biased variance of y."""
    y = F.conv3d(x, weight, bias, (1, *stride), (0, *padding))
    return y, y.mean((0, 2, 3, 4)), y.var((0, 2, 3, 4), unbiased=False)


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1, 1)


def temporal_conv_bnrelu(y: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor,
                         bias: Optional[Tensor], stride: int, padding: int) -> Tensor:
    """conv3d(relu((y - mean)*scale + shift), weight, bias, stride (stride,1,1), padding
    (padding,0,0)): the zero padding is applied after the activation (z space)."""
    z = F.relu((y - _per_channel(mean)) * _per_channel(scale) + _per_channel(shift))
    return F.conv3d(z, weight, bias, (stride, 1, 1), (padding, 0, 0))


def fused_eval(x: Tensor, spatial_weight: Tensor, spatial_bias: Optional[Tensor], temporal_weight: Tensor,
               temporal_bias: Optional[Tensor], stride, padding, residual: Optional[Tensor] = None,
               relu: bool = False) -> Tensor:
    """The inference block with BatchNorm folded into the spatial weight and bias:
    temporal(relu(spatial(x))), then ``+ residual`` and ``relu`` if given."""
    z = F.relu(F.conv3d(x, spatial_weight, spatial_bias, (1, *stride[1:]), (0, *padding[1:])))
    out = F.conv3d(z, temporal_weight, temporal_bias, (stride[0], 1, 1), (padding[0], 0, 0))
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, mean: Tensor,
                         var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm's running-statistics update, in place: the unbiased variance, and the
    cumulative average when momentum is None."""
    with torch.no_grad():
        num_batches_tracked.add_(1)
        factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
        running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
        unbiased = var.to(running_var.dtype) * (count / (count - 1))
        running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
