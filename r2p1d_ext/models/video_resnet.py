"""torchvision's R(2+1)D layout with the fused block: ``r2plus1d_10/18/34(num_classes=400)``
mirror ``torchvision.models.video.r2plus1d_18`` module for module (with the (2+1)D blocks
fused), so a torchvision state_dict loads with :func:`load_torchvision_state_dict` and gives
the same outputs.

``conv`` selects the block class (the fused module by default; the pure-PyTorch
``r2p1d_ext.reference.SpatioTemporalConv`` builds the same network unfused).

In eval the residual blocks run folded (r2p1d_ext/conv_bn.py, docs/inference.md): each
BatchNorm after a block folds into the block's temporal conv, the residual add and ReLU
run in its output loop, and the shortcut's BatchNorm folds into its 1x1x1 conv.

``channels_last`` (default: on CUDA) makes the network work in ``torch.channels_last_3d``:
its input is converted once, and every activation after it stays in that layout, which is
what the CUDA tensor-core kernels read and write.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Type

import torch
from torch import Tensor, nn

from ..conv_bn import ConvBN
from ..module import SpatioTemporalConv
from ._common import check_layer_sizes, to_working_layout

Conv = Type[nn.Module]


def _tv_mid_channels(in_planes: int, planes: int) -> int:
    """torchvision's BasicBlock midplanes, used by both of its (2+1)D convs."""
    return (in_planes * planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * planes)


class BasicBlock(nn.Module):
    """torchvision's video BasicBlock with its Conv2Plus1D convs fused; in eval its second
    conv, BatchNorm, residual add and ReLU are one op."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, conv: Conv = SpatioTemporalConv):
        super().__init__()
        mid = _tv_mid_channels(in_planes, planes)
        self.conv1 = ConvBN(conv(in_planes, planes, 3, stride, 1, bias=False, mid_channels=mid),
                            nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = ConvBN(conv(planes, planes, 3, 1, 1, bias=False, mid_channels=mid),
                            nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # plain modules only (an unfused model)
            residual = x if self.downsample is None else self.downsample(x)
            return self.relu(self.conv2(self.conv1(x)) + residual)
        return self._folding_forward(x)

    @torch.jit.unused
    def _folding_forward(self, x: Tensor) -> Tensor:
        """The same computation; with ConvBN convs, the second conv, its BatchNorm, the
        residual add and the ReLU are one op in eval (r2p1d_ext/conv_bn.py)."""
        residual = x if self.downsample is None else self.downsample(x)
        if isinstance(self.conv2, ConvBN):
            return self.conv2(self.conv1(x), residual, self.relu)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class VideoResNet(nn.Module):
    """torchvision's VideoResNet with an R(2+1)D stem and BasicBlocks, fused."""

    def __init__(self, layers: Sequence[int], num_classes: int = 400, conv: Conv = SpatioTemporalConv,
                 channels_last: Optional[bool] = None, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        layers = check_layer_sizes(layers)
        self.channels_last = channels_last
        # torchvision's R2Plus1dStem: (1,7,7) conv to 45 channels, BN, ReLU, (3,1,1) conv to 64.
        self.stem = ConvBN(
            conv(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False, mid_channels=45),
            nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1, conv)
        self.layer2 = self._make_layer(128, layers[1], 2, conv)
        self.layer3 = self._make_layer(256, layers[2], 2, conv)
        self.layer4 = self._make_layer(512, layers[3], 2, conv)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        # Dropout before the classifier (fine-tuning recipes); no parameters, so the
        # state_dict stays torchvision's.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, conv: Conv) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = ConvBN(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, conv)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, conv=conv) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = to_working_layout(x, self.channels_last)
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def r2plus1d_10(num_classes: int = 400, conv: Conv = SpatioTemporalConv,
                channels_last: Optional[bool] = None, dropout: float = 0.0) -> VideoResNet:
    return VideoResNet([1, 1, 1, 1], num_classes, conv, channels_last, dropout)


def r2plus1d_18(num_classes: int = 400, conv: Conv = SpatioTemporalConv,
                channels_last: Optional[bool] = None, dropout: float = 0.0) -> VideoResNet:
    """Module for module torchvision.models.video.r2plus1d_18, fused."""
    return VideoResNet([2, 2, 2, 2], num_classes, conv, channels_last, dropout)


def r2plus1d_34(num_classes: int = 400, conv: Conv = SpatioTemporalConv,
                channels_last: Optional[bool] = None, dropout: float = 0.0) -> VideoResNet:
    return VideoResNet([3, 4, 6, 3], num_classes, conv, channels_last, dropout)


# Inside torchvision's Conv2Plus1D (an nn.Sequential), where each part of our block sits.
_BLOCK_PARTS = {"0": "spatial_conv", "1": "bn", "3": "temporal_conv"}
# torchvision's flat R2Plus1dStem against our stem (fused block, BN, ReLU).
_STEM_KEYS = {"stem.0.": "stem.0.spatial_conv.", "stem.1.": "stem.0.bn.",
              "stem.3.": "stem.0.temporal_conv.", "stem.4.": "stem.1."}


def torchvision_keys_to_fused(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the keys of a torchvision R(2+1)D state_dict to this module layout (keys
    already in it stay: a state_dict of ours passes through unchanged)."""
    out = {}
    # Only torchvision's flat stem has a module 3 (its temporal conv); ours is stem.0.<part>.
    torchvision_stem = any(k.startswith("stem.3.") for k in state_dict)
    for key, value in state_dict.items():
        new = key
        for tv, ours in _STEM_KEYS.items() if torchvision_stem else ():
            if key.startswith(tv):
                new = ours + key[len(tv):]
                break
        else:
            parts = key.split(".")
            # layerL.B.convK.0.<part>.<param> -> layerL.B.convK.0.<name>.<param>
            if (len(parts) == 6 and parts[0].startswith("layer") and parts[2].startswith("conv")
                    and parts[3] == "0" and parts[4] in _BLOCK_PARTS):
                new = ".".join(parts[:4] + [_BLOCK_PARTS[parts[4]]] + parts[5:])
        out[new] = value
    return out


def load_torchvision_state_dict(model: VideoResNet, state_dict: Mapping[str, Tensor],
                                strict: bool = True):
    """Load a torchvision ``r2plus1d_*`` state_dict (e.g. Kinetics-400 weights on disk,
    ``torch.load(path, weights_only=True)``) into the matching ``r2plus1d_*`` builder."""
    return model.load_state_dict(torchvision_keys_to_fused(state_dict), strict=strict)
