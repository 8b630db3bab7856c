"""R(2+1)D networks built from the fused SpatioTemporalConv, in two layouts:

* torchvision's (:mod:`.video_resnet`): ``r2plus1d_10/18/34(num_classes)`` mirror
  ``torchvision.models.video.r2plus1d_18`` module for module, so torchvision weights load
  (:func:`load_torchvision_state_dict`);
* the paper's original R2Plus1D-PyTorch layout (:mod:`.r2plus1d`): ``R2Plus1DNet`` and
  ``R2Plus1DClassifier``.

``build_model(arch, num_classes)`` builds a torchvision-layout network by name (``ARCHS``).
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from ..conv_bn import ConvBN
from ._common import to_working_layout
from .r2plus1d import R2Plus1DClassifier, R2Plus1DNet, SpatioTemporalResBlock, SpatioTemporalResLayer
from .video_resnet import (BasicBlock, VideoResNet, load_torchvision_state_dict, r2plus1d_10, r2plus1d_18,
                           r2plus1d_34, torchvision_keys_to_fused)

ARCHS: Dict[str, Callable[..., VideoResNet]] = {"r2plus1d_10": r2plus1d_10, "r2plus1d_18": r2plus1d_18,
                                                 "r2plus1d_34": r2plus1d_34}


def build_model(arch: str, num_classes: int) -> nn.Module:
    """The ``arch`` network (a key of ARCHS) with ``num_classes`` outputs, fused."""
    if arch not in ARCHS:
        raise ValueError(f"expected arch in {sorted(ARCHS)}, got {arch!r}")
    return ARCHS[arch](num_classes=num_classes)


__all__ = ["ARCHS", "build_model", "r2plus1d_10", "r2plus1d_18", "r2plus1d_34", "VideoResNet", "BasicBlock",
           "ConvBN", "load_torchvision_state_dict", "torchvision_keys_to_fused", "R2Plus1DNet",
           "R2Plus1DClassifier", "SpatioTemporalResBlock", "SpatioTemporalResLayer", "to_working_layout"]
