"""What fine-tuning recipes add to a training run: frozen first stages, learning-rate
multipliers for the backbone and the classifier, and the optimizer (SGD with momentum, as
torchvision's video reference, or AdamW).

Stages, in the network's order: ``stem``, ``layer1`` ... ``layer4``. ``freeze_stages = K``
freezes the first K (1: the stem; 5: the whole backbone, training the classifier alone):
their parameters stop requiring gradients and are left out of the optimizer, and their
BatchNorm layers (the fused blocks' inner ones included) stay in eval mode during training,
so their running statistics are the pretrained ones (MMAction2's ``frozen_stages`` and
``norm_eval`` of the frozen part). Freezing a prefix means no gradient flows through it at
all: the frozen stages run their inference path (r2p1d_ext/conv_bn.py folds them)."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
HEAD = "fc"
OPTIMIZERS = ("sgd", "adamw")


def frozen_modules(model: nn.Module, stages: int) -> List[nn.Module]:
    """The first `stages` stages of `model` (a VideoResNet)."""
    if not 0 <= stages <= len(STAGES):
        raise ValueError(f"expected freeze_stages from 0 to {len(STAGES)} ({', '.join(STAGES)}), got {stages}")
    missing = [s for s in STAGES[:stages] if not hasattr(model, s)]
    if missing:
        raise ValueError(f"cannot freeze {', '.join(missing)}: {type(model).__name__} has no such stage")
    return [getattr(model, s) for s in STAGES[:stages]]


def freeze(model: nn.Module, stages: int) -> None:
    """The parameters of the first `stages` stages stop requiring gradients."""
    for module in frozen_modules(model, stages):
        for p in module.parameters():
            p.requires_grad_(False)


def keep_frozen_in_eval(model: nn.Module, stages: int) -> None:
    """After ``model.train()``: the frozen stages back in eval mode (running statistics not
    updated, inputs normalised with them)."""
    for module in frozen_modules(model, stages):
        module.eval()


def param_groups(model: nn.Module, weight_decay: float, backbone_lr: float, head_lr: float) -> List[Dict]:
    """Optimizer groups of the parameters that train: weights (with `weight_decay`) before
    biases and BatchNorm parameters (without), each split into backbone and classifier
    (``fc``) where their rates differ; a group's ``lr`` is its base rate (the scheduler
    multiplies every group's by the same factor). Equal rates give the two groups of a run
    without multipliers, whose optimizer state resumes as before."""
    groups: Dict[tuple, List[torch.Tensor]] = {}
    split = backbone_lr != head_lr
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = split and name.split(".")[0] == HEAD
        groups.setdefault((p.ndim <= 1, head), []).append(p)
    return [{"params": params, "lr": head_lr if head else backbone_lr,
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (no_decay, head), params in sorted(groups.items())]


def make_optimizer(name: str, groups: List[Dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW (torch's defaults for its betas and eps) over `groups`."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"expected optimizer to be one of {OPTIMIZERS}, got {name!r}")
