"""R(2+1)D networks built from the fused SpatioTemporalConv, in two layouts:

* torchvision's (:mod:`.video_resnet`): ``r2plus1d_10/18/34(num_classes)`` mirror
  ``torchvision.models.video.r2plus1d_18`` module for module, so torchvision weights load
  (:func:`load_torchvision_state_dict`);
* the paper's original R2Plus1D-PyTorch layout (:mod:`.r2plus1d`): ``R2Plus1DNet`` and
  ``R2Plus1DClassifier``.

``build_model(arch, num_classes)`` builds a torchvision-layout network by name (``ARCHS``);
``load_model(path)`` a trained one from a checkpoint or a torchvision state_dict, and
``load_initial_weights`` starts a fine-tuning run from one (:mod:`.loading`).
"""
from __future__ import annotations

from ..conv_bn import ConvBN
from ._common import to_working_layout
from .r2plus1d import R2Plus1DClassifier, R2Plus1DNet, SpatioTemporalResBlock, SpatioTemporalResLayer
from .video_resnet import (BasicBlock, VideoResNet, load_torchvision_state_dict, r2plus1d_10, r2plus1d_18,
                           r2plus1d_34, torchvision_keys_to_fused)
from .builders import ARCHS, build_model
from .loading import LoadedModel, load_initial_weights, load_model, read_labels

__all__ = ["ARCHS", "build_model", "LoadedModel", "load_model", "load_initial_weights", "read_labels",
           "r2plus1d_10", "r2plus1d_18", "r2plus1d_34", "VideoResNet", "BasicBlock", "ConvBN", "load_torchvision_state_dict", "torchvision_keys_to_fused", "R2Plus1DNet",
           "R2Plus1DClassifier", "SpatioTemporalResBlock", "SpatioTemporalResLayer", "to_working_layout"]
