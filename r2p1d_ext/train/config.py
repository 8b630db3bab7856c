"""The settings of a training run (``TrainConfig``, the fields of ``r2p1d train``) and how
the device, the mixed-precision dtype and the memory layout follow from them."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Tuple

import torch


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "r2plus1d_18"
    epochs: int = 45
    batch_size: int = 8
    clip_len: int = 16
    frame_stride: int = 1
    short_side: int = 128
    crop_size: int = 112
    hflip: bool = True
    lr: float = 0.01            # for batch 8 per process; scale with the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"    # or "step"
    step_epochs: int = 10       # step schedule: lr *= gamma every step_epochs
    milestones: Optional[Tuple[int, ...]] = None  # step schedule: lr *= gamma at these epochs instead
    gamma: float = 0.1
    clip_grad: float = 0.0      # max gradient norm; 0 disables
    amp: Optional[str] = None   # None, "bfloat16" or "float16"
    channels_last: Optional[bool] = None  # channels_last_3d model and clips; None: on CUDA
    dtype: str = "float32"      # the parameters' and activations' dtype ("float64": for exactness checks)
    workers: Optional[int] = None  # DataLoader workers per process; None: default_workers()
    prefetch: int = 2           # batches each worker prepares ahead (DataLoader's prefetch_factor)
    eval_clips: int = 3         # clips per validation video (video-level accuracy)
    eval_every: int = 1         # evaluate every N epochs (and after the last)
    log_every: int = 50         # a steps.csv row (loss, lr, clips/s, data wait) every N steps; 0: none
    checkpoint_every: int = 0   # also checkpoint every N optimizer steps; 0: per epoch only
    stop_after_steps: int = 0   # stop (with a checkpoint) after N steps of this run; 0: never
    sync_bn: bool = False
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True
    init: Optional[str] = None  # fine-tuning: start from these weights (models.load_initial_weights)
    # Which videos: annotation files instead of the folder layout (r2p1d_ext/data/annotations.py).
    annotations: Optional[str] = None
    annotation_format: str = "auto"
    fold: int = 1               # the official split of UCF101/HMDB51 (--split)
    # Preprocessing beyond the short side (r2p1d_ext/models/presets.py names sets of them).
    preset: Optional[str] = None  # recorded; from_preset and the command line apply its values
    resize: Optional[Tuple[int, int]] = None  # exact (height, width) instead of short_side
    fps: Optional[float] = None  # resample every video to this frame rate
    clips_per_video: int = 1    # training clips per video and epoch
    scale_jitter: Optional[Tuple[int, int]] = None  # training: random short side in [low, high]
    eval_crops: int = 1         # spatial crops per evaluation clip (1: centre; 3: along the long side)
    # Fine-tuning controls (r2p1d_ext/train/finetune.py, r2p1d_ext/train/mixing.py).
    freeze_stages: int = 0      # freeze the first K of stem, layer1..layer4
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    dropout: float = 0.0        # before the classifier
    label_smoothing: float = 0.0
    mixup: float = 0.0          # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0         # Beta(alpha, alpha) of CutMix; 0: off
    optimizer: str = "sgd"      # or "adamw"

    @classmethod
    def from_preset(cls, name: str, data: str, out: str, **overrides: Any) -> "TrainConfig":
        """A config with preset `name`'s settings (r2p1d_ext/models/presets.py), then `overrides`."""
        from ..models.presets import preset
        return cls(data, out, **{**preset(name), "preset": name, **overrides})


# Settings a resumed run may change without a word (the rest change what is trained).
RESUME_FREE = {"data", "out", "epochs", "workers", "progress", "device", "checkpoint_every", "stop_after_steps",
               "eval_clips", "init", "prefetch", "eval_every", "log_every", "eval_crops", "annotations"}


def validate(cfg: TrainConfig) -> None:
    """The numbers `r2p1d train` checks on its command line, for callers of train()."""
    for name in ("epochs", "batch_size", "clip_len", "frame_stride", "short_side", "crop_size", "eval_clips",
                 "eval_every", "prefetch"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"expected {name} >= 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"expected a finite lr > 0, got {cfg.lr}")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"expected dtype 'float32' or 'float64', got {cfg.dtype!r}")
    if cfg.dtype == "float64" and cfg.amp:
        raise ValueError("--dtype float64 and --amp exclude each other: mixed precision is for float32 models")
    if cfg.workers is not None and cfg.workers < 0:
        raise ValueError(f"expected workers >= 0, got {cfg.workers}")
    for name in ("clips_per_video", "eval_crops", "fold"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"expected {name} >= 1, got {getattr(cfg, name)}")
    for name in ("backbone_lr_mult", "head_lr_mult", "mixup", "cutmix"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"expected {name} to be a finite number >= 0, got {value}")
    for name in ("dropout", "label_smoothing"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"expected {name} in [0, 1), got {getattr(cfg, name)}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"expected optimizer 'sgd' or 'adamw', got {cfg.optimizer!r}")
    if not 0 <= cfg.freeze_stages <= 5:
        raise ValueError(f"expected freeze_stages from 0 to 5 (stem, layer1..layer4), got {cfg.freeze_stages}")
    if cfg.freeze_stages == 5 and cfg.head_lr_mult == 0:
        raise ValueError("with every stage frozen and head_lr_mult 0 nothing trains")
    for name in ("resize", "scale_jitter"):
        value = getattr(cfg, name)
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ValueError(f"expected {name} to be two sizes >= 1, got {value}")
    if cfg.scale_jitter is not None and cfg.resize is not None:
        raise ValueError("scale_jitter draws a short side, resize fixes the size: use one of them")
    if cfg.milestones is not None and (not cfg.milestones or min(cfg.milestones) < 1):
        raise ValueError(f"expected milestones to be epochs >= 1, got {cfg.milestones}")
    if cfg.fps is not None and not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise ValueError(f"expected fps > 0, got {cfg.fps}")


def default_workers(local_world: int, cores: Optional[int] = None) -> int:
    """DataLoader workers per process: the cores this process may use, shared among the
    processes of this machine (torchrun's local world), less one for the training process
    itself; at least 1, at most 16."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores // max(1, local_world) - 1))


def amp_dtype(amp: Optional[str]) -> Optional[torch.dtype]:
    """The autocast dtype of the ``amp`` setting (None: no autocast)."""
    if amp is None:
        return None
    if amp not in ("bfloat16", "float16"):
        raise ValueError(f"expected amp to be 'bfloat16' or 'float16', got {amp!r}")
    return getattr(torch, amp)


def use_channels_last(setting: Optional[bool], device: torch.device) -> bool:
    """channels_last_3d as configured; by default on CUDA (the layout the tensor-core kernels
    read and write, so no block converts) and not on the CPU (whose kernels work in NCDHW)."""
    return setting if setting is not None else device.type == "cuda"


def resolve_device(spec: Optional[str], local_rank: Optional[int] = None) -> torch.device:
    """The device to run on. None: this process's GPU when there is one (cuda:<local rank>
    under torchrun), else the CPU. "cuda" without an index means, as everywhere in PyTorch,
    the current device (the local rank's under torchrun)."""
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device is available")
        device = torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)
    return device
