"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, on its device,
and the cross-entropy of soft targets with label smoothing.

As torchvision's ``transforms.v2.MixUp``/``CutMix``: each batch is mixed with itself rolled
by one clip, with a weight lambda ~ Beta(alpha, alpha); CutMix pastes one box of the other
clip into every frame (the same box over time) and sets lambda to the share of pixels kept.
With both on, each batch takes one of them at random. The draws come from a generator
seeded by (seed, rank, step), so a resumed run mixes as the uninterrupted one would."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def mix_batch(clips: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              rng: np.random.Generator) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(clips, targets): `clips` (N, C, T, H, W) mixed and the (N, classes) soft targets, or
    the clips unchanged and None when neither is on (alpha 0) or the batch has one clip."""
    if not (mixup > 0 or cutmix > 0) or len(labels) < 2:
        return clips, None
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    other = clips.roll(1, 0)
    if use_cutmix:
        h, w = clips.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        clips = clips.clone()
        clips[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        clips = clips * lam + other * (1.0 - lam)
    targets = soft_targets(labels, num_classes)
    return clips, targets * lam + targets.roll(1, 0) * (1.0 - lam)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, targets: Optional[torch.Tensor],
             label_smoothing: float) -> torch.Tensor:
    """The summed cross-entropy of the batch: against `targets` (mixed) when given, else the
    labels; with `label_smoothing` as F.cross_entropy applies it."""
    return F.cross_entropy(logits, labels if targets is None else targets, reduction="sum",
                           label_smoothing=label_smoothing)
