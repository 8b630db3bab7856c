"""Deprecated import path of R(2+1)D networks and ConvBN: now r2p1d_ext.models (and
r2p1d_ext.conv_bn for ConvBN). Kept so that old imports and pickles still resolve
(r2p1d_ext/_deprecated.py)."""
from ._deprecated import forward

__getattr__, __dir__ = forward(__name__, "r2p1d_ext.models", "r2p1d_ext.models.video_resnet",
                               "r2p1d_ext.models.r2plus1d", "r2p1d_ext.models._common",
                               "r2p1d_ext.conv_bn")
