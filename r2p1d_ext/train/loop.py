"""The training loop of R(2+1)D video classifiers.

``train(TrainConfig(...))`` runs SGD with momentum and weight decay, a linear warm-up then a
cosine (or step) schedule, optional AMP and gradient clipping, on one process or under
``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPUs). Every epoch (and every
``checkpoint_every`` steps) it writes ``<out>/checkpoint.pt`` atomically; running the same
command again resumes from it (model, optimizer, scheduler, scaler, RNG states, epoch and
step, mid-epoch included). SIGINT/SIGTERM save a checkpoint and stop cleanly. Rank 0
evaluates after every epoch and writes the reports (r2p1d_ext/train/reports.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import signal
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .._cli_common import plural
from ..data.dataset import VideoDataset, count_failed
from ..models import build_model, load_initial_weights
from ..module import cpu_precision_notice
from ..sync_bn import convert_sync_batchnorm
from . import checkpoint as ckpt
from .config import RESUME_FREE, TrainConfig, amp_dtype, resolve_device, use_channels_last, validate
from .distributed import Dist, EpochSampler
from .evaluation import evaluate, topk_correct
from .reports import EpochReports, epoch_line


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate factor of optimizer step `step`: linear warm-up, then cosine (or
    step) decay over the run."""
    warmup = max(0, round(cfg.warmup_epochs * steps_per_epoch))
    total = max(1, cfg.epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


class _StopFlag:
    """SIGINT/SIGTERM set the flag; the loop saves a checkpoint and returns."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _check_writable(folder: str) -> None:
    """Fail before the first step, not after an epoch of training, when the run folder
    cannot take the logs and checkpoints."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to the run folder {folder} (--out): {err}") from err


def _check_resume(saved: Dict[str, Any], cfg: TrainConfig, path: str) -> None:
    """A checkpoint of another architecture is an error; other changed settings a warning."""
    if saved.get("arch") != cfg.arch:
        raise ValueError(f"{path} is a {saved.get('arch')} checkpoint, this run asks for --arch {cfg.arch}: "
                         f"use --arch {saved.get('arch')} or another --out")
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
               if k not in RESUME_FREE and k in saved and saved[k] != v]
    if changed:
        warnings.warn(f"resuming {path} with changed settings: {', '.join(changed)}", RuntimeWarning, stacklevel=4)


@dataclasses.dataclass
class _Progress:
    """Where the run stands: what a checkpoint records besides the states."""
    epoch: int = 0
    batches_done: int = 0  # of the current epoch
    step: int = 0
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


class _Run:
    """One training run: its data, model, optimizer and progress, set up in the order that
    makes a run reproducible from its seed (seeds, datasets, model initialisation)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.ddp = Dist()
        self.device = resolve_device(cfg.device, self.ddp.local_rank if self.ddp.enabled else None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = amp_dtype(cfg.amp)
        seed_everything(cfg.seed + self.ddp.rank)
        self._setup_data()
        self._setup_model()
        self.path = os.path.join(cfg.out, "checkpoint.pt")
        self.progress = _Progress()
        self.run_steps = 0
        self.failed_train: set = set()  # training videos that failed to decode (any worker, any epoch)
        self.result: Dict[str, Any] = {}

    def say(self, *args) -> None:
        if self.ddp.main:
            print(*args, flush=True)

    def _setup_data(self) -> None:
        cfg = self.cfg
        common = dict(clip_len=cfg.clip_len, frame_stride=cfg.frame_stride, short_side=cfg.short_side,
                      crop_size=cfg.crop_size)
        self.train_set = VideoDataset(cfg.data, "train", hflip=cfg.hflip, seed=cfg.seed, **common)
        self.val_set = VideoDataset(cfg.data, "val", clips_per_video=cfg.eval_clips, **common)
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(f"train and val class folders differ: {self.train_set.classes} vs {self.val_set.classes}")
        self.classes = self.train_set.classes
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, self.ddp.rank, self.ddp.world)
        # The last incomplete batch is dropped (as torchvision's reference trainer does): a
        # batch of one clip can leave BatchNorm one value per channel, an error mid-epoch.
        self.steps_per_epoch = self.sampler.per_rank // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split gives {self.sampler.per_rank} clips per process, fewer than "
                             f"--batch-size {cfg.batch_size}: lower the batch size")
        self.val_loader = DataLoader(self.val_set, batch_size=cfg.batch_size, num_workers=cfg.workers)

    def _setup_model(self) -> None:
        cfg, device = self.cfg, self.device
        model = build_model(cfg.arch, len(self.classes))
        if cfg.sync_bn:  # every BatchNorm, the fused blocks' included (r2p1d_ext/sync_bn.py)
            # torch's SyncBatchNorm on CUDA; on the CPU, where it has no kernel and DDP refuses
            # it, the library's
            convert = nn.SyncBatchNorm.convert_sync_batchnorm if device.type == "cuda" else convert_sync_batchnorm
            model = convert(model)
        model = model.to(device)
        self.channels_last = use_channels_last(cfg.channels_last, device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16
                                           and device.type == "cuda")

    def summary(self) -> str:
        """What this run trains, on what, where: printed once at the start."""
        cfg = self.cfg
        params = sum(p.numel() for p in self.model.parameters())
        where = f"{self.device}" + (f" ({plural(torch.get_num_threads(), 'thread')})" if self.device.type == "cpu"
                                    else "")
        if self.ddp.enabled:
            where += f" x {plural(self.ddp.world, 'process', 'processes')}"
        precision = f"autocast {cfg.amp}" if cfg.amp else "float32"
        return (f"training {cfg.arch} ({params / 1e6:.1f} M parameters) on {plural(len(self.classes), 'class', 'classes')}: "
                f"{plural(len(self.train_set), 'training clip')} ({plural(self.steps_per_epoch, 'step')} of "
                f"{cfg.batch_size} per epoch"
                f"{' and process' if self.ddp.enabled else ''}), {len(self.val_set.videos)} val videos x "
                f"{plural(cfg.eval_clips, 'clip')}; {cfg.clip_len}x{cfg.crop_size}x{cfg.crop_size} clips; {where}, "
                f"{precision}; {plural(cfg.epochs, 'epoch')} -> {cfg.out} (checkpoint.pt, log.csv, metrics.json, curves.png)")

    def prepare_folder(self) -> None:
        os.makedirs(self.cfg.out, exist_ok=True)
        if self.ddp.main:
            _check_writable(self.cfg.out)
            for tmp in ckpt.remove_stale_temporaries(self.cfg.out):
                self.say(f"removed {tmp}, left by a run killed while writing it")

    def resume(self) -> None:
        """Loads the run folder's checkpoint, if any, and says where the run continues."""
        if not (os.path.exists(self.path) or os.path.exists(ckpt.previous(self.path))):
            return
        state = ckpt.load(self.path, map_location=self.device)
        _check_resume(state.get("config", {}), self.cfg, self.path)
        if state["classes"] != self.classes:
            raise ValueError(f"{self.path} was trained on classes {state['classes']}, the data has {self.classes}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        p = self.progress = _Progress(state["epoch"], state["batches_done"], state["step"], state["history"])
        rank = self.ddp.rank
        ckpt.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        self.say(f"resuming from {self.path}: epoch {p.epoch + 1}/{self.cfg.epochs}, step {p.step}"
                 + (f" ({plural(p.batches_done, 'batch', 'batches')} into the epoch)" if p.batches_done else ""))

    def save(self) -> None:
        """A checkpoint of the run as it stands (every rank's RNG states; rank 0 writes)."""
        rng = [ckpt.rng_state()]
        if self.ddp.enabled:
            gathered = [None] * self.ddp.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.ddp.main:
            p = self.progress
            ckpt.save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                              "epoch": p.epoch, "batches_done": p.batches_done, "step": p.step,
                              "history": p.history, "rng": rng, "classes": self.classes,
                              "config": dataclasses.asdict(self.cfg)}, self.path, keep_previous=True)
        self.ddp.barrier()

    def train_epoch(self, net: nn.Module, stop: _StopFlag) -> Optional[List[float]]:
        """The rest of the current epoch; returns (loss*n, correct, n) summed over this
        process's steps, or None when a signal or stop_after_steps stopped the run (saved)."""
        cfg, p, device = self.cfg, self.progress, self.device
        self.train_set.set_epoch(p.epoch)
        self.sampler.set_epoch(p.epoch, skip=p.batches_done * cfg.batch_size)
        loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                            num_workers=cfg.workers, drop_last=True)
        net.train()
        sums = [0.0, 0.0, 0.0]  # loss*n, correct, n (this epoch's part since start/resume)
        bar = tqdm(loader, desc=f"epoch {p.epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.ddp.main),
                   initial=p.batches_done, total=self.steps_per_epoch)
        for clips, labels, _, failed in bar:
            count_failed(failed, self.failed_train)
            if (failed >= 0).any():  # clips of videos that failed to decode: left out
                clips, labels = clips[failed < 0], labels[failed < 0]
                if len(labels) == 0:
                    p.batches_done += 1
                    continue
            clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss, logits = self._step(net, clips, labels)
            p.step += 1; self.run_steps += 1; p.batches_done += 1
            sums[0] += loss.item() * len(labels)
            sums[1] += topk_correct(logits.detach().float(), labels, ks=(1,))[0]
            sums[2] += len(labels)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                self.save()
            if stop.set or (cfg.stop_after_steps and self.run_steps >= cfg.stop_after_steps):
                self.save()
                self.say(f"stopped at epoch {p.epoch + 1}, step {p.step}; checkpoint saved to {self.path}; "
                         "run the same command to resume")
                return None
        bar.close()
        return sums

    def _step(self, net: nn.Module, clips: torch.Tensor, labels: torch.Tensor):
        """One optimizer step on a batch; returns (loss, logits)."""
        cfg, p = self.cfg, self.progress
        if self.channels_last:
            clips = clips.to(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = net(clips)
            loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):  # stop before a step makes the weights non-finite
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {p.epoch + 1}, step {p.step + 1}; "
                f"{self.path if os.path.exists(self.path) else 'no checkpoint'} keeps the last good state "
                "(lower --lr, add --clip-grad, or check the data)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, logits

    def end_epoch(self, sums: List[float], seconds: float, reports: Optional[EpochReports]) -> None:
        """Closes an epoch: rank 0 evaluates and reports; every rank gets the history and
        the checkpoint is written."""
        p = self.progress
        loss_sum, correct, n, failed_count = self.ddp.sum(sums + [len(self.failed_train)])
        p.epoch += 1
        p.batches_done = 0
        if self.ddp.main:
            metrics = evaluate(self.model, self.val_loader, self.device, self.amp_dtype, self.channels_last,
                               len(self.classes), progress=self.cfg.progress)
            row = {"epoch": p.epoch, "step": p.step, "lr": self.scheduler.get_last_lr()[0],
                   "train_loss": loss_sum / max(n, 1), "train_top1": correct / max(n, 1),
                   **{k: v for k, v in metrics.items() if k not in ("confusion", "val_failed_videos")},
                   "epoch_seconds": seconds,
                   "skipped_videos": len(self.train_set.unreadable) + len(self.val_set.unreadable)
                   + int(failed_count) + metrics["val_failed_videos"]}
            p.history.append(row)
            self.result = reports.write(row, p.history, self.classes, metrics["confusion"])
            self.say(epoch_line(row, len(self.classes)))
        if self.ddp.enabled:
            box = [p.history]
            dist.broadcast_object_list(box, src=0)
            p.history = box[0]
        self.save()


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) and return the last epoch's metrics (``{"interrupted": True, ...}``
    when a signal or ``stop_after_steps`` stopped it early)."""
    validate(cfg)
    run = _Run(cfg)
    run.prepare_folder()
    run.resume()
    p = run.progress
    if p.epoch >= cfg.epochs:
        run.say(f"{run.path} has already finished {plural(cfg.epochs, 'epoch')}; nothing to do")
        return p.history[-1] if p.history else {}
    if cfg.init and p.step == 0:  # a fresh run from pretrained weights (a resumed one has its own)
        run.say(load_initial_weights(run.model, cfg.init))
    run.say(run.summary())
    notice = cpu_precision_notice(run.amp_dtype) if run.device.type == "cpu" else None
    if notice:
        run.say(f"note: {notice}")
    net = run.model
    if run.ddp.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    reports = EpochReports(cfg.out) if run.ddp.main else None
    with _StopFlag() as stop, warnings.catch_warnings():
        if notice:  # said once above: not again by the blocks' first call, inside the progress bar
            warnings.filterwarnings("ignore", message=re.escape(notice))
        while p.epoch < cfg.epochs:
            start = time.time()
            sums = run.train_epoch(net, stop)
            if sums is None:
                return {"interrupted": True, "epoch": p.epoch, "step": p.step}
            run.end_epoch(sums, time.time() - start, reports)
    return run.result
