"""The settings of a training run (``TrainConfig``, the fields of ``r2p1d train``) and how
the device, the mixed-precision dtype and the memory layout follow from them."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

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


# Settings a resumed run may change without a word (the rest change what is trained).
RESUME_FREE = {"data", "out", "epochs", "workers", "progress", "device", "checkpoint_every", "stop_after_steps",
               "eval_clips", "init", "prefetch", "eval_every", "log_every"}


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
