"""The torchvision-layout networks by name: ``ARCHS`` and ``build_model`` (what the trainer,
checkpoints and ``r2p1d`` commands name a network by)."""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .video_resnet import VideoResNet, r2plus1d_10, r2plus1d_18, r2plus1d_34

ARCHS: Dict[str, Callable[..., VideoResNet]] = {"r2plus1d_10": r2plus1d_10, "r2plus1d_18": r2plus1d_18,
                                                 "r2plus1d_34": r2plus1d_34}


def build_model(arch: str, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """The ``arch`` network (a key of ARCHS) with ``num_classes`` outputs, fused; `dropout`
    before its classifier."""
    if arch not in ARCHS:
        raise ValueError(f"expected arch in {sorted(ARCHS)}, got {arch!r}")
    return ARCHS[arch](num_classes=num_classes, dropout=dropout)
