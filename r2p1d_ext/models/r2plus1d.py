"""The R(2+1)D network of the paper in the original R2Plus1D-PyTorch layout:
``R2Plus1DNet(layer_sizes)`` (clips -> 512-d features) and ``R2Plus1DClassifier(num_classes,
layer_sizes)``: a 3x7x7 stem with stride 1x2x2, four stages of residual blocks doubling the
channels, downsampling in the first block of stages 3-5, global average pooling.

``conv`` selects the block class (the fused module by default; the pure-PyTorch
``r2p1d_ext.reference.SpatioTemporalConv`` builds the same network unfused). In eval the
residual blocks run folded (:func:`r2p1d_ext.conv_bn.conv_bn`, docs/inference.md).
"""
from __future__ import annotations

from typing import Optional, Sequence, Type

from torch import Tensor, nn

from ..conv_bn import conv_bn
from ..module import SpatioTemporalConv
from ._common import check_layer_sizes, to_working_layout

Conv = Type[nn.Module]


class SpatioTemporalResBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the (optionally downsampled) input, -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 downsample: bool = False, conv: Conv = SpatioTemporalConv):
        super().__init__()
        self.downsample = downsample
        padding = kernel_size // 2
        if downsample:
            self.downsampleconv = conv(in_channels, out_channels, 1, stride=2)
            self.downsamplebn = nn.BatchNorm3d(out_channels)
            self.conv1 = conv(in_channels, out_channels, kernel_size, stride=2, padding=padding)
        else:
            self.conv1 = conv(in_channels, out_channels, kernel_size, padding=padding)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, kernel_size, padding=padding)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.outrelu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        # folded in eval where it can be (conv_bn); otherwise module by module
        res = conv_bn(self.conv1, self.bn1, x, self.relu1)
        if self.downsample:
            x = conv_bn(self.downsampleconv, self.downsamplebn, x)
        return conv_bn(self.conv2, self.bn2, res, self.outrelu, residual=x)


class SpatioTemporalResLayer(nn.Module):
    """``layer_size`` residual blocks; the first one may downsample."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, layer_size: int,
                 downsample: bool = False, conv: Conv = SpatioTemporalConv):
        super().__init__()
        self.block1 = SpatioTemporalResBlock(in_channels, out_channels, kernel_size, downsample, conv)
        self.blocks = nn.ModuleList(
            SpatioTemporalResBlock(out_channels, out_channels, kernel_size, conv=conv)
            for _ in range(layer_size - 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        for block in self.blocks:
            x = block(x)
        return x


class R2Plus1DNet(nn.Module):
    """The R(2+1)D feature extractor: (N, 3, T, H, W) clips -> (N, 512) features."""

    def __init__(self, layer_sizes: Sequence[int], conv: Conv = SpatioTemporalConv,
                 channels_last: Optional[bool] = None):
        super().__init__()
        sizes = check_layer_sizes(layer_sizes)
        self.channels_last = channels_last
        self.conv1 = conv(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        self.conv2 = SpatioTemporalResLayer(64, 64, 3, sizes[0], conv=conv)
        self.conv3 = SpatioTemporalResLayer(64, 128, 3, sizes[1], downsample=True, conv=conv)
        self.conv4 = SpatioTemporalResLayer(128, 256, 3, sizes[2], downsample=True, conv=conv)
        self.conv5 = SpatioTemporalResLayer(256, 512, 3, sizes[3], downsample=True, conv=conv)
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = to_working_layout(x, self.channels_last)
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return self.pool(x).flatten(1)


class R2Plus1DClassifier(nn.Module):
    """R2Plus1DNet followed by a linear classifier: clips -> (N, num_classes) logits."""

    def __init__(self, num_classes: int, layer_sizes: Sequence[int], conv: Conv = SpatioTemporalConv,
                 channels_last: Optional[bool] = None):
        super().__init__()
        self.res2plus1d = R2Plus1DNet(layer_sizes, conv, channels_last)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.res2plus1d(x))
