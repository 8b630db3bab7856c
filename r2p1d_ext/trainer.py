"""Training and evaluation of R(2+1)D video classifiers.

``train(TrainConfig(...))`` runs SGD with momentum and weight decay, a linear warm-up then a
cosine (or step) schedule, optional AMP and gradient clipping, on one process or under
``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPUs). Every epoch (and every
``checkpoint_every`` steps) it writes ``<out>/checkpoint.pt`` atomically; running the same
command again resumes from it (model, optimizer, scheduler, scaler, RNG states, epoch and
step, mid-epoch included). SIGINT/SIGTERM save a checkpoint and stop cleanly. Logs:
``log.csv`` (and TensorBoard when installed), ``metrics.json``, ``curves.png`` and
``confusion.png``; rank 0 writes them all.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import signal
import tempfile
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from . import checkpoint as ckpt
from . import network
from .dataset import VideoDataset, count_failed, video_scores

ARCHS = {"r2plus1d_10": network.r2plus1d_10, "r2plus1d_18": network.r2plus1d_18,
         "r2plus1d_34": network.r2plus1d_34}


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
    workers: int = 2
    eval_clips: int = 3         # clips per validation video (video-level accuracy)
    checkpoint_every: int = 0   # also checkpoint every N optimizer steps; 0: per epoch only
    stop_after_steps: int = 0   # stop (with a checkpoint) after N steps of this run; 0: never
    sync_bn: bool = False
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True


# ------------------------------------------------------------------ distributed set-up
class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def sum(self, values: List[float]) -> List[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


class EpochSampler(Sampler):
    """This rank's share of a permutation that depends only on (seed, epoch), padded like
    DistributedSampler, with the first ``skip`` items left out (mid-epoch resume)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch, self.skip = epoch, skip

    def indices(self) -> List[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]
        return order[self.rank::self.world][self.skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


# ------------------------------------------------------------------ pieces
def _seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
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


def _amp_dtype(cfg: TrainConfig):
    if cfg.amp is None:
        return None
    if cfg.amp not in ("bfloat16", "float16"):
        raise ValueError(f"expected amp to be 'bfloat16' or 'float16', got {cfg.amp!r}")
    return getattr(torch, cfg.amp)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> List[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top.eq(labels[:, None])
    return [int(hit[:, :min(k, k_max)].any(1).sum()) for k in ks]


def build_model(arch: str, num_classes: int) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"expected arch in {sorted(ARCHS)}, got {arch!r}")
    return ARCHS[arch](num_classes=num_classes)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
             channels_last: bool = False, num_classes: Optional[int] = None,
             progress: bool = False) -> Dict[str, Any]:
    """Clip-level loss/top-1/top-5, video-level top-1 (clip scores averaged per video) and
    the video-level confusion matrix. A video any of whose clips failed to decode is left
    out of every metric (never replaced by another video's clips) and counted in
    ``val_failed_videos``."""
    model.eval()
    scores, labels, vids, losses, failed = [], [], [], [], set()
    for clips, y, v, bad in tqdm(loader, desc="eval", leave=False, disable=not progress):
        count_failed(bad, failed)
        clips, y = clips.to(device), y.to(device)
        if channels_last:
            clips = clips.to(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(clips)
        logits = logits.float()
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        scores.append(logits.softmax(1).cpu()); labels.append(y.cpu()); vids.append(v)
    scores, labels, vids, losses = torch.cat(scores), torch.cat(labels), torch.cat(vids), torch.cat(losses)
    keep = ~torch.isin(vids, torch.tensor(sorted(failed), dtype=vids.dtype))
    if not keep.any():
        raise RuntimeError(f"every evaluation video failed to decode ({len(failed)} videos)")
    scores, labels, vids, losses = scores[keep], labels[keep], vids[keep], losses[keep]
    n = len(labels)
    top1, top5 = topk_correct(scores, labels)
    vscores, vlabels = video_scores(scores, vids, labels)
    c = num_classes or scores.shape[1]
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((vlabels, vscores.argmax(1)), torch.ones_like(vlabels), accumulate=True)
    return {"val_loss": float(losses.sum()) / n, "val_top1": top1 / n, "val_top5": top5 / n,
            "val_video_top1": float((vscores.argmax(1) == vlabels).float().mean()),
            "val_failed_videos": len(failed), "confusion": confusion.tolist()}


# ------------------------------------------------------------------ logs and plots
def _write_json(path: str, obj) -> None:
    ckpt.write_atomic(path, lambda f: json.dump(obj, f, indent=2), binary=False, suffix=".json")


def _append_csv(path: str, row: Dict[str, Any]) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_curves(history: List[Dict[str, Any]], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch"); a.set_ylabel("cross-entropy"); a.legend(); a.set_title("loss")
    for key, label in (("train_top1", "train clip top-1"), ("val_top1", "val clip top-1"),
                       ("val_top5", "val clip top-5"), ("val_video_top1", "val video top-1")):
        b.plot(epochs, [h[key] for h in history], "o-", label=label)
    b.set_ylim(0, 1.02); b.set_xlabel("epoch"); b.set_ylabel("accuracy"); b.legend(fontsize=8)
    b.set_title("accuracy")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    return True


def plot_confusion(confusion: List[List[int]], classes: List[str], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title("validation videos")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    return True


class _TensorBoard:
    """TensorBoard scalars when the tensorboard package is installed; nothing otherwise."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(folder)
        except (ImportError, ModuleNotFoundError):
            self.writer = None

    def log(self, row: Dict[str, Any], step: int):
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()


# ------------------------------------------------------------------ the loop
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


def _channels_last(setting: Optional[bool], device: torch.device) -> bool:
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


def _validate(cfg: TrainConfig) -> None:
    """The numbers `r2p1d train` checks on its command line, for callers of train()."""
    for name in ("epochs", "batch_size", "clip_len", "frame_stride", "short_side", "crop_size", "eval_clips"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"expected {name} >= 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"expected a finite lr > 0, got {cfg.lr}")


# Settings a resumed run may change without a word (the rest change what is trained).
_RESUME_FREE = {"data", "out", "epochs", "workers", "progress", "device", "checkpoint_every", "stop_after_steps",
                "eval_clips"}


def _check_resume(saved: Dict[str, Any], cfg: TrainConfig, path: str) -> None:
    """A checkpoint of another architecture is an error; other changed settings a warning."""
    if saved.get("arch") != cfg.arch:
        raise ValueError(f"{path} is a {saved.get('arch')} checkpoint, this run asks for --arch {cfg.arch}: "
                         f"use --arch {saved.get('arch')} or another --out")
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
               if k not in _RESUME_FREE and k in saved and saved[k] != v]
    if changed:
        warnings.warn(f"resuming {path} with changed settings: {', '.join(changed)}", RuntimeWarning, stacklevel=3)


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) and return the last epoch's metrics (``{"interrupted": True, ...}``
    when a signal or ``stop_after_steps`` stopped it early)."""
    _validate(cfg)
    ddp = Dist()
    device = resolve_device(cfg.device, ddp.local_rank if ddp.enabled else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = _amp_dtype(cfg)
    say = (lambda *a: print(*a, flush=True)) if ddp.main else (lambda *a: None)
    _seed_everything(cfg.seed + ddp.rank)

    common = dict(clip_len=cfg.clip_len, frame_stride=cfg.frame_stride, short_side=cfg.short_side,
                  crop_size=cfg.crop_size)
    train_set = VideoDataset(cfg.data, "train", hflip=cfg.hflip, seed=cfg.seed, **common)
    val_set = VideoDataset(cfg.data, "val", clips_per_video=cfg.eval_clips, **common)
    if val_set.classes != train_set.classes:
        raise ValueError(f"train and val class folders differ: {train_set.classes} vs {val_set.classes}")
    classes = train_set.classes
    sampler = EpochSampler(len(train_set), cfg.seed, ddp.rank, ddp.world)
    # The last incomplete batch is dropped (as torchvision's reference trainer does): a batch
    # of one clip can leave BatchNorm one value per channel, an error mid-epoch.
    steps_per_epoch = sampler.per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training split gives {sampler.per_rank} clips per process, fewer than "
                         f"--batch-size {cfg.batch_size}: lower the batch size")

    model = build_model(cfg.arch, len(classes))
    if cfg.sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm); the fused blocks keep per-process statistics")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    channels_last = _channels_last(cfg.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    os.makedirs(cfg.out, exist_ok=True)
    if ddp.main:
        _check_writable(cfg.out)
        for tmp in ckpt.remove_stale_temporaries(cfg.out):
            say(f"removed {tmp}, left by a run killed while writing it")
    path = os.path.join(cfg.out, "checkpoint.pt")
    epoch, batches_done, step, history = 0, 0, 0, []
    if os.path.exists(path):
        state = ckpt.load(path, map_location=device)
        _check_resume(state.get("config", {}), cfg, path)
        if state["classes"] != classes:
            raise ValueError(f"{path} was trained on classes {state['classes']}, the data has {classes}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epoch, batches_done, step, history = state["epoch"], state["batches_done"], state["step"], state["history"]
        ckpt.set_rng_state(state["rng"][ddp.rank] if ddp.rank < len(state["rng"]) else state["rng"][0])
        say(f"resuming from {path}: epoch {epoch + 1}/{cfg.epochs}, step {step}"
            + (f" ({batches_done} batches into the epoch)" if batches_done else ""))
    if epoch >= cfg.epochs:
        say(f"{path} has already finished {cfg.epochs} epochs; nothing to do")
        return history[-1] if history else {}
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp.enabled else model

    def save(epoch_, batches_done_):
        rng = [ckpt.rng_state()]
        if ddp.enabled:
            gathered = [None] * ddp.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if ddp.main:
            ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                              "epoch": epoch_, "batches_done": batches_done_, "step": step,
                              "history": history, "rng": rng, "classes": classes,
                              "config": dataclasses.asdict(cfg)}, path, keep_previous=True)
        ddp.barrier()

    tb = _TensorBoard(os.path.join(cfg.out, "tensorboard")) if ddp.main else None
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers)
    run_steps = 0
    failed_train: set = set()  # training videos that failed to decode (any worker, any epoch)
    result: Dict[str, Any] = {}
    with _StopFlag() as stop:
        while epoch < cfg.epochs:
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=batches_done * cfg.batch_size)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                                num_workers=cfg.workers, drop_last=True)
            net.train()
            sums = [0.0, 0.0, 0.0]  # loss*n, correct, n (this epoch's part since start/resume)
            start = time.time()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and ddp.main),
                       initial=batches_done, total=steps_per_epoch)
            for clips, labels, _, failed in bar:
                count_failed(failed, failed_train)
                if (failed >= 0).any():  # clips of videos that failed to decode: left out
                    clips, labels = clips[failed < 0], labels[failed < 0]
                    if len(labels) == 0:
                        batches_done += 1
                        continue
                clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if channels_last:
                    clips = clips.to(memory_format=torch.channels_last_3d)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = net(clips)
                    loss = F.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):  # stop before a step makes the weights non-finite
                    raise FloatingPointError(
                        f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                        f"{path if os.path.exists(path) else 'no checkpoint'} keeps the last good state "
                        "(lower --lr, add --clip-grad, or check the data)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1; run_steps += 1; batches_done += 1
                sums[0] += loss.item() * len(labels)
                sums[1] += topk_correct(logits.detach().float(), labels, ks=(1,))[0]
                sums[2] += len(labels)
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save(epoch, batches_done)
                if stop.set or (cfg.stop_after_steps and run_steps >= cfg.stop_after_steps):
                    save(epoch, batches_done)
                    say(f"stopped at epoch {epoch + 1}, step {step}; checkpoint saved to {path}; "
                        "run the same command to resume")
                    return {"interrupted": True, "epoch": epoch, "step": step}
            bar.close()
            loss_sum, correct, n, failed_count = ddp.sum(sums + [len(failed_train)])
            epoch += 1
            batches_done = 0
            if ddp.main:
                metrics = evaluate(model, val_loader, device, amp_dtype, channels_last, len(classes),
                                   progress=cfg.progress)
                row = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0],
                       "train_loss": loss_sum / max(n, 1), "train_top1": correct / max(n, 1),
                       **{k: v for k, v in metrics.items() if k not in ("confusion", "val_failed_videos")},
                       "epoch_seconds": time.time() - start,
                       "skipped_videos": len(train_set.unreadable) + len(val_set.unreadable)
                       + int(failed_count) + metrics["val_failed_videos"]}
                history.append(row)
                _append_csv(os.path.join(cfg.out, "log.csv"), row)
                tb.log(row, step)
                result = {**row, "classes": classes, "confusion": metrics["confusion"], "history": history}
                _write_json(os.path.join(cfg.out, "metrics.json"), result)
                plot_curves(history, os.path.join(cfg.out, "curves.png"))
                plot_confusion(metrics["confusion"], classes, os.path.join(cfg.out, "confusion.png"))
                say(f"epoch {epoch}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f} | "
                    f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f} "
                    f"video top-1 {row['val_video_top1']:.3f}")
            if ddp.enabled:
                box = [history]
                dist.broadcast_object_list(box, src=0)
                history = box[0]
            save(epoch, 0)
    return result


def evaluate_checkpoint(data: str, checkpoint: str, split: str = "val", batch_size: int = 8,
                        workers: int = 2, eval_clips: Optional[int] = None, device: Optional[str] = None,
                        progress: bool = True) -> Dict[str, Any]:
    """Metrics of a checkpoint's model on ``data/split`` (preprocessing as in training)."""
    state = ckpt.load(checkpoint)
    cfg = state["config"]
    dev = resolve_device(device)
    data_set = VideoDataset(data, split, clip_len=cfg["clip_len"], frame_stride=cfg["frame_stride"],
                            short_side=cfg["short_side"], crop_size=cfg["crop_size"],
                            clips_per_video=eval_clips or cfg["eval_clips"])
    if data_set.classes != state["classes"]:
        raise ValueError(f"{checkpoint} was trained on classes {state['classes']}, {data}/{split} has {data_set.classes}")
    model = build_model(cfg["arch"], len(state["classes"])).to(dev)
    model.load_state_dict(state["model"])
    channels_last = _channels_last(cfg.get("channels_last"), dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    loader = DataLoader(data_set, batch_size=batch_size, num_workers=workers)
    metrics = evaluate(model, loader, dev, _amp_dtype(TrainConfig(data, "", amp=cfg.get("amp"))),
                       channels_last, len(state["classes"]), progress=progress)
    return {"checkpoint": checkpoint, "split": split, "epoch": state["epoch"], "classes": state["classes"],
            "skipped_videos": len(data_set.unreadable) + metrics["val_failed_videos"], **metrics}
