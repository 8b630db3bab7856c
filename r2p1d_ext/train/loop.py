"""The training loop of R(2+1)D video classifiers.

``train(TrainConfig(...))`` runs SGD with momentum and weight decay, a linear warm-up then a
cosine (or step) schedule, optional AMP and gradient clipping, on one process or under
``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPUs). Every epoch (and every
``checkpoint_every`` steps) it writes ``<out>/checkpoint.pt`` atomically; running the same
command again resumes from it (model, optimizer, scheduler, scaler, RNG states, epoch, step
and the epoch's running sums, mid-epoch included).

Under torchrun every decision is taken by all ranks together (docs/training.md):

- Every rank takes every step. One small all-reduce per step (after the forward pass, before
  the backward) adds up each rank's count of good clips, loss and stop request: a rank whose
  clips all failed to decode still runs forward and backward on an empty batch, and each
  rank's loss is weighted so that the gradient is that of one process on all the good clips
  of the global step.
- One decision to stop. A signal (SIGINT/SIGTERM) on any rank or ``stop_after_steps`` stops
  every rank after the same step with one checkpoint, which rank 0 writes (after checking
  that every rank holds the same parameters); a non-finite loss on any rank stops every
  rank before that step's update, the last checkpoint being the last good state.
- At a resume the newest checkpoint that any node can see is read by one rank and broadcast,
  so nodes without a shared ``--out`` resume from the same state.
- Evaluation is sharded: each rank scores its share of the validation videos, every rank
  gets the metrics (r2p1d_ext/train/evaluation.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .._cli_common import plural
from .._io import FolderBusyError, exclusive
from ..data.dataset import VideoDataset, count_failed
from ..data.video import one_thread_per_worker
from ..models import build_model, load_initial_weights
from ..module import cpu_precision_notice
from ..sync_bn import convert_sync_batchnorm
from . import checkpoint as ckpt
from .inputs import network_input
from .config import RESUME_FREE, TrainConfig, amp_dtype, default_workers, resolve_device, use_channels_last, validate
from .distributed import Dist, EpochSampler
from .evaluation import evaluate, topk_correct, video_loader
from .finetune import STAGES, freeze, keep_frozen_in_eval, make_optimizer, param_groups
from .mixing import loss_sum as mixed_loss_sum, mix_batch
from .reports import RunReports, epoch_line, evaluated, step_line

LOCK = ".train.lock"
BEST, BEST_METRIC = "best.pt", "val_video_top1"  # the best evaluation's weights, by this metric
# Test switch (docs/testing.md): "RANK:FAULT:N" makes that rank fail in a job's first start, so
# the tests can land a failure where they need it: FAULT "kill-after-step" (SIGKILL after
# optimizer step N), "kill-at-epoch-end" (SIGKILL after evaluating epoch N, before its
# checkpoint), "nan-loss" (a NaN loss in step N's forward).
FAULT_SWITCH = "R2P1D_TEST_FAULT"


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
            epoch = step // steps_per_epoch
            if cfg.milestones:  # torchvision's MultiStepLR: a decay at each milestone passed
                return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
            return cfg.gamma ** (epoch // cfg.step_epochs)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


class _StopFlag:
    """SIGINT/SIGTERM set the flag; the ranks agree on it at the next step (_Run._step)."""

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


def _position(path: str) -> Optional[tuple]:
    """(epoch, batches done) of the checkpoint at `path` (or its previous file), read without
    loading its tensors; None when there is none."""
    if not (os.path.exists(path) or os.path.exists(ckpt.previous(path))):
        return None
    with warnings.catch_warnings():  # the full load below says it, once
        warnings.simplefilter("ignore")
        state = ckpt.load(path, mmap=True)
    return int(state["epoch"]), int(state["batches_done"])


def _digest(model: nn.Module) -> str:
    """A hash of every parameter's bytes: equal on two ranks only if the weights are."""
    h = hashlib.sha1()
    for p in model.parameters():
        h.update(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class _Progress:
    """Where the run stands: what a checkpoint records besides the states."""
    epoch: int = 0
    batches_done: int = 0  # of the current epoch
    step: int = 0
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    # The current epoch's sums over every rank: loss * clips, correct clips, clips, seconds
    # the ranks waited for data (added over the ranks).
    sums: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    confusion: Optional[List[List[int]]] = None  # of the last evaluation


class _StepWindow:
    """The steps since the last steps.csv row: clips, loss, data wait, wall time."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss = self.clips = self.wait = 0.0
        self.start = time.perf_counter()

    def add(self, loss: float, clips: float, wait: float):
        self.loss += loss
        self.clips += clips
        self.wait += wait


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
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        seed_everything(cfg.seed + self.ddp.rank)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(self.ddp.local_world)
        self._setup_data()
        self._setup_model()
        self.path = os.path.join(cfg.out, "checkpoint.pt")
        self.progress = _Progress()
        self.run_steps = 0
        self.failed_train: set = set()  # training videos that failed to decode (any worker, any epoch)
        self.result: Dict[str, Any] = {}
        self.reports: Optional[RunReports] = None
        self.window = _StepWindow()
        self.bar_fields: Dict[str, str] = {}  # the progress bar's fields from the last steps.csv row

    def say(self, *args) -> None:
        if self.ddp.main:
            print(*args, flush=True)

    # ------------------------------------------------------------------ set-up
    def _loader_options(self) -> Dict[str, Any]:
        """Workers that live for the whole run, each with one decoder thread and `prefetch`
        batches in flight; pinned memory on CUDA, so that the copies to the GPU are
        asynchronous."""
        options: Dict[str, Any] = dict(num_workers=self.workers, pin_memory=self.device.type == "cuda")
        if self.workers:
            options.update(persistent_workers=True, prefetch_factor=self.cfg.prefetch,
                           worker_init_fn=one_thread_per_worker)
        return options

    def _setup_data(self) -> None:
        cfg = self.cfg
        common = dict(clip_len=cfg.clip_len, frame_stride=cfg.frame_stride, short_side=cfg.short_side,
                      crop_size=cfg.crop_size, resize=cfg.resize, fps=cfg.fps, annotations=cfg.annotations,
                      fold=cfg.fold, annotation_format=cfg.annotation_format)
        self.train_set = VideoDataset(cfg.data, "train", hflip=cfg.hflip, seed=cfg.seed,
                                      clips_per_video=cfg.clips_per_video, scale_jitter=cfg.scale_jitter, **common)
        # Annotation files: one class list for both subsets (a class may lack videos in one).
        self.val_set = VideoDataset(cfg.data, "val", clips_per_video=cfg.eval_clips, crops=cfg.eval_crops,
                                    classes=self.train_set.classes if cfg.annotations else None, **common)
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(f"train and val class folders differ: {self.train_set.classes} vs {self.val_set.classes}")
        self.classes = self.train_set.classes
        self.missing = len(self.train_set.missing) + len(self.val_set.missing)
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, self.ddp.rank, self.ddp.world)
        # The last incomplete batch is dropped (as torchvision's reference trainer does): a
        # batch of one clip can leave BatchNorm one value per channel, an error mid-epoch.
        self.steps_per_epoch = self.sampler.per_rank // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split gives {self.sampler.per_rank} clips per process, fewer than "
                             f"--batch-size {cfg.batch_size}: lower the batch size")
        options = self._loader_options()
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                       drop_last=True, **options)
        self.val_loader = video_loader(self.val_set, cfg.batch_size, self.workers, self.ddp.rank, self.ddp.world,
                                       options["pin_memory"], cfg.prefetch, persistent=self.workers > 0)

    def _setup_model(self) -> None:
        cfg, device = self.cfg, self.device
        model = build_model(cfg.arch, len(self.classes), cfg.dropout)
        freeze(model, cfg.freeze_stages)
        if cfg.sync_bn:  # every BatchNorm, the fused blocks' included (r2p1d_ext/sync_bn.py)
            # torch's SyncBatchNorm on CUDA; on the CPU, where it has no kernel and DDP refuses
            # it, the library's. In a process group of their own: their backward collectives
            # then never interleave with DDP's gradient all-reduces, whose order follows when
            # each rank's gradients become ready (not the same on a rank with an empty batch).
            convert = nn.SyncBatchNorm.convert_sync_batchnorm if device.type == "cuda" else convert_sync_batchnorm
            model = convert(model, process_group=dist.new_group() if self.ddp.enabled else None)
        model = model.to(device=device, dtype=self.dtype)
        self.channels_last = use_channels_last(cfg.channels_last, device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        groups = param_groups(model, cfg.weight_decay, cfg.lr * cfg.backbone_lr_mult, cfg.lr * cfg.head_lr_mult)
        self.optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)
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
        precision = f"autocast {cfg.amp}" if cfg.amp else cfg.dtype
        loader = (f"{plural(self.workers, 'loader worker')} per process, {cfg.prefetch} batches ahead each"
                  if self.workers else "clips decoded in the training process (--workers 0)")
        if self.device.type == "cuda":
            loader += ", pinned memory"
        log = f"a steps.csv row every {plural(cfg.log_every, 'step')}" if cfg.log_every else "no steps.csv"
        every = "every epoch" if cfg.eval_every == 1 else f"every {cfg.eval_every} epochs and after the last"
        crops = f" x {cfg.eval_crops} crops" if cfg.eval_crops > 1 else ""
        listed = ""
        if cfg.annotations:
            listed = (f" listed by {cfg.annotations} (split {cfg.fold}"
                      + (f", {self.missing} listed videos missing" if self.missing else "") + ")")
        frozen = (f", {'/'.join(STAGES[:cfg.freeze_stages])} frozen" if cfg.freeze_stages else "")
        return (f"training {cfg.arch} ({params / 1e6:.1f} M parameters{frozen}) on "
                f"{plural(len(self.classes), 'class', 'classes')}{listed}: "
                f"{plural(len(self.train_set), 'training clip')} ({plural(self.steps_per_epoch, 'step')} of "
                f"{cfg.batch_size} per epoch"
                f"{' and process' if self.ddp.enabled else ''}), {len(self.val_set.videos)} val videos x "
                f"{plural(cfg.eval_clips, 'clip')}{crops}; {cfg.clip_len}x{cfg.crop_size}x{cfg.crop_size} clips; "
                f"{where}, {precision}; {loader}; {plural(cfg.epochs, 'epoch')}, evaluated {every}"
                f"; {log} -> {cfg.out} (checkpoint.pt, best.pt, log.csv, steps.csv, metrics.json, per_class.csv, "
                "curves.png)")

    def prepare_folder(self) -> None:
        """The run folder, writable; rank 0 checks."""
        os.makedirs(self.cfg.out, exist_ok=True)
        if self.ddp.main:
            _check_writable(self.cfg.out)

    def remove_stale_temporaries(self) -> None:
        """What a run killed inside an atomic write left (only while holding the folder: a
        live run's temporaries are its own)."""
        if self.ddp.main:
            for tmp in ckpt.remove_stale_temporaries(self.cfg.out, (ckpt.TMP_SUFFIX, ".json", ".csv")):
                self.say(f"removed {tmp}, left by a run killed while writing it")

    def hold_folder(self) -> contextlib.AbstractContextManager:
        """Rank 0 holds ``<out>/.train.lock`` for the run: a second run into the same folder
        would overwrite its checkpoints. A POSIX lock, which the DataLoader workers do not
        inherit: they may outlive a killed trainer by seconds, and must not lock out its
        restart."""
        if not self.ddp.main:
            return contextlib.nullcontext()
        out = self.cfg.out

        def busy(holder: str) -> FolderBusyError:
            return FolderBusyError(f"another r2p1d train (process {holder}) is using the run folder {out}; wait for "
                                   "it to finish or stop it (it resumes from its checkpoint), or train into another --out")
        return exclusive(os.path.join(out, LOCK), busy, inherited=False)

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> None:
        """Loads the newest checkpoint any rank can see, if any (one rank reads it, every rank
        gets it), and says where the run continues."""
        mine = _position(self.path) if self.ddp.local_rank == 0 else None
        found = [(pos, r) for r, pos in enumerate(self.ddp.gather(mine)) if pos is not None]
        if not found:
            return
        src = max(found, key=lambda f: (f[0], -f[1]))[1]  # the newest; on a tie the lowest rank
        state = self.ddp.broadcast(ckpt.load(self.path) if self.ddp.rank == src else None, src)
        _check_resume(state.get("config", {}), self.cfg, self.path)
        if state["classes"] != self.classes:
            raise ValueError(f"{self.path} was trained on classes {state['classes']}, the data has {self.classes}")
        saved_world = state.get("world", len(state["rng"]))
        if saved_world != self.ddp.world and state["batches_done"]:
            raise ValueError(f"{self.path} was saved {state['batches_done']} batches into epoch {state['epoch'] + 1} "
                             f"by {plural(saved_world, 'process', 'processes')}, this run has {self.ddp.world}: "
                             f"resume it with {saved_world} (a checkpoint from an epoch's end resumes with any "
                             "number)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        p = self.progress = _Progress(state["epoch"], state["batches_done"], state["step"], state["history"],
                                      list(state.get("sums", [0.0] * 4)), state.get("confusion"))
        rank = self.ddp.rank
        ckpt.set_rng_state(state["rng"][rank % len(state["rng"])])
        self.say(f"resuming from {self.path}" + (f" (read on rank {src})" if src else "")
                 + f": epoch {p.epoch + 1}/{self.cfg.epochs}, step {p.step}"
                 + (f" ({plural(p.batches_done, 'batch', 'batches')} into the epoch)" if p.batches_done else "")
                 + (f"; saved by {saved_world} processes, now {self.ddp.world}" if saved_world != self.ddp.world
                    else ""))
        if self.reports is not None:
            self.reports.resume(p.history, p.confusion, p.step)

    def save(self) -> None:
        """A checkpoint of the run as it stands: every rank's RNG states, and only once every
        rank is seen to hold the same parameters; rank 0 writes it."""
        p = self.progress
        gathered = self.ddp.gather((ckpt.rng_state(), _digest(self.model)))
        differ = [r for r, (_, digest) in enumerate(gathered) if digest != gathered[0][1]]
        if differ:
            raise RuntimeError(f"the parameters of rank(s) {differ} differ from rank 0's at step {p.step}: the "
                               "processes no longer train one model; not saving (restart from the last checkpoint)")
        if self.ddp.main:
            ckpt.save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                              "epoch": p.epoch, "batches_done": p.batches_done, "step": p.step,
                              "history": p.history, "sums": p.sums, "confusion": p.confusion,
                              "rng": [g[0] for g in gathered], "world": self.ddp.world, "classes": self.classes,
                              "config": dataclasses.asdict(self.cfg)}, self.path, keep_previous=True)
        self.ddp.barrier()

    def _keep_best(self, row: Dict[str, Any], history: List[Dict[str, Any]]) -> str:
        """Rank 0: ``best.pt`` (the weights, classes, settings and metrics, no optimizer
        state; loads like a checkpoint in eval, predict and --init) when this evaluation's
        BEST_METRIC beats every earlier one of the run. Returns the line that says so, or ""."""
        earlier = [h[BEST_METRIC] for h in history if BEST_METRIC in h]
        if earlier and row[BEST_METRIC] <= max(earlier):
            return ""
        ckpt.save_atomic({"model": self.model.state_dict(), "classes": self.classes,
                          "config": dataclasses.asdict(self.cfg), "epoch": row["epoch"], "step": row["step"],
                          "metrics": {k: v for k, v in row.items() if k.startswith("val_")}},
                         os.path.join(self.cfg.out, BEST))
        return f"best so far ({BEST_METRIC} {row[BEST_METRIC]:.4f}): {BEST} written"

    def _fault(self, kind: str, at: int) -> bool:
        """Whether the test switch asks this rank for the fault `kind` at `at`."""
        spec = os.environ.get(FAULT_SWITCH)
        if not spec or self.ddp.restart:
            return False
        rank, fault, n = spec.split(":")
        return int(rank) == self.ddp.rank and fault == kind and int(n) == at

    def _kill_switch(self, kind: str, at: int) -> None:
        if self._fault(kind, at):
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ training
    def train_epoch(self, net: nn.Module, stop: _StopFlag) -> bool:
        """The rest of the current epoch; False when the ranks decided to stop (saved)."""
        cfg, p, device = self.cfg, self.progress, self.device
        self.sampler.set_epoch(p.epoch, skip=p.batches_done * cfg.batch_size)
        net.train()
        keep_frozen_in_eval(self.model, cfg.freeze_stages)
        bar = tqdm(desc=f"epoch {p.epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.ddp.main),
                   initial=p.batches_done, total=self.steps_per_epoch)
        batches = iter(self.train_loader)
        self.window.reset()
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            clips, labels, _, failed = batch
            wait = time.perf_counter() - tick
            count_failed(failed, self.failed_train)
            if (failed >= 0).any():  # clips of videos that failed to decode: left out
                clips, labels = clips[failed < 0], labels[failed < 0]
            clips = network_input(clips, device, self.dtype, self.channels_last, self.train_set.mean,
                                  self.train_set.std)
            labels = labels.to(device, non_blocking=True)
            # One process needs no agreement: a signal during this step stops right after it,
            # before the next batch is fetched (Ctrl-C also ends the loader's workers).
            stopping = self._step(net, clips, labels, wait, stop) or (not self.ddp.enabled and stop.set)
            p.batches_done += 1
            self._log_step()
            if self.ddp.main and cfg.progress and p.sums[2]:
                # The epoch's running loss and the lr; the last steps.csv row's rates stay beside them.
                bar.set_postfix({**self.bar_fields, "loss": f"{p.sums[0] / p.sums[2]:.3f}",
                                 "lr": f"{self.scheduler.get_last_lr()[0]:.2e}"}, refresh=False)
            bar.update(1)
            if stopping or (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0):
                self.save()
            self._kill_switch("kill-after-step", p.step)
            if stopping:
                bar.close()
                self.say(f"stopped at epoch {p.epoch + 1}, step {p.step}; checkpoint saved to {self.path}; "
                         "run the same command to resume")
                return False
        bar.close()
        return True

    def _step(self, net: nn.Module, clips: torch.Tensor, labels: torch.Tensor, wait: float, stop: _StopFlag) -> bool:
        """One global step: forward on this rank's good clips (maybe none), one all-reduce of
        (clips, loss, correct, wait, stop requests) over the ranks, then, if any rank has a
        clip, backward with the loss weighted by world / global clips and the optimizer
        step. Returns whether the ranks decided to stop after it."""
        cfg, p = self.cfg, self.progress
        # Mixing draws depend on (seed, rank, step) only: a resumed run mixes as the first would.
        clips, targets = mix_batch(clips, labels, len(self.classes), cfg.mixup, cfg.cutmix,
                                   np.random.default_rng((cfg.seed, self.ddp.rank, p.step)))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = net(clips)
            loss_sum = mixed_loss_sum(logits.float(), labels, targets, cfg.label_smoothing)
        if self._fault("nan-loss", p.step + 1):
            loss_sum = loss_sum * float("nan")
        correct = topk_correct(logits.detach().float(), labels, ks=(1,))[0] if len(labels) else 0
        wants_stop = stop.set or bool(cfg.stop_after_steps and self.run_steps + 1 >= cfg.stop_after_steps)
        n, loss_total, correct_total, wait_total, stops = self.ddp.sum(
            [len(labels), loss_sum.item(), correct, wait, float(wants_stop)])
        if not math.isfinite(loss_total):
            # Every rank sees it and stops here, before a step makes the weights non-finite.
            # No new checkpoint: this forward pass has moved the running statistics (NaN, if
            # the activations were); the last checkpoint is the last good state.
            raise FloatingPointError(
                f"non-finite training loss ({loss_total}) at epoch {p.epoch + 1}, step {p.step + 1}; "
                f"{self.path if os.path.exists(self.path) else 'no checkpoint'} keeps the last good state "
                "(lower --lr, add --clip-grad, or check the data)")
        p.sums = [p.sums[0] + loss_total, p.sums[1] + correct_total, p.sums[2] + n, p.sums[3] + wait_total]
        self.window.add(loss_total, n, wait_total / self.ddp.world)
        if n:
            loss = loss_sum * (self.ddp.world / n)  # DDP averages the ranks' gradients
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            p.step += 1
        self.run_steps += 1
        return stops > 0

    def _log_step(self) -> None:
        """Every log_every steps: a steps.csv row (and TensorBoard, and the bar's fields)."""
        cfg, p, w = self.cfg, self.progress, self.window
        if not cfg.log_every or p.step == 0 or p.step % cfg.log_every or not w.clips:
            return
        elapsed = max(time.perf_counter() - w.start, 1e-9)
        row = {"step": p.step, "epoch": round(p.epoch + p.batches_done / self.steps_per_epoch, 4),
               "loss": w.loss / w.clips, "lr": self.scheduler.get_last_lr()[0], "clips_per_s": w.clips / elapsed,
               "data_wait": min(1.0, w.wait / elapsed)}
        if self.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.reports is not None:
            self.reports.step(row)
        self.bar_fields = {k: v for k, v in step_line(row).items() if k not in ("loss", "lr")}
        w.reset()

    def end_epoch(self, seconds: float) -> None:
        """Closes an epoch on every rank: the sharded evaluation (every --eval-every epochs and
        after the last), the history row, the checkpoint; rank 0 writes the reports."""
        cfg, p = self.cfg, self.progress
        loss_sum, correct, n, wait = p.sums
        epoch = p.epoch + 1
        failed_train = len(set().union(*self.ddp.gather(self.failed_train)))
        row: Dict[str, Any] = {"epoch": epoch, "step": p.step, "lr": self.scheduler.get_last_lr()[0],
                               "train_loss": loss_sum / max(n, 1), "train_top1": correct / max(n, 1),
                               "epoch_seconds": seconds, "data_wait_seconds": wait / self.ddp.world}
        failed_val = 0
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            # Every shard with the running statistics of rank 0, which its checkpoint holds.
            self.ddp.share_buffers(self.model)
            metrics = evaluate(self.model, self.val_loader, self.device, self.amp_dtype, self.channels_last,
                               len(self.classes), progress=cfg.progress and self.ddp.main, ddp=self.ddp)
            p.confusion = metrics.pop("confusion")
            failed_val = metrics.pop("val_failed_videos")
            row.update(metrics)
        row["skipped_videos"] = (len(self.train_set.unreadable) + len(self.val_set.unreadable) + failed_train
                                 + failed_val)
        if self.cfg.annotations is not None:
            row["missing_videos"] = self.missing
        self._kill_switch("kill-at-epoch-end", epoch)
        best = self._keep_best(row, p.history) if evaluated(row) and self.ddp.main else ""
        p.history.append(row)
        p.epoch, p.batches_done, p.sums = epoch, 0, [0.0] * 4
        self.save()
        self.result = {**row, "classes": self.classes, "confusion": p.confusion, "history": p.history}
        if self.reports is not None:
            self.result = self.reports.epoch(p.history, p.confusion)
            self.say(epoch_line(row, len(self.classes)))
            if best:
                self.say(best)


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) and return the last epoch's metrics (``{"interrupted": True, ...}``
    when a signal or ``stop_after_steps`` stopped it early)."""
    validate(cfg)
    run = _Run(cfg)
    run.prepare_folder()
    with run.hold_folder():
        run.remove_stale_temporaries()
        if run.ddp.main:
            run.reports = RunReports(cfg.out, run.classes)
        run.resume()
        return _train(run)


def _train(run: _Run) -> Dict[str, Any]:
    cfg, p = run.cfg, run.progress
    if p.epoch >= cfg.epochs:
        run.say(f"{run.path} has already finished {plural(cfg.epochs, 'epoch')}; nothing to do")
        return p.history[-1] if p.history else {}
    if cfg.init and p.step == 0:  # a fresh run from pretrained weights (a resumed one has its own)
        run.say(load_initial_weights(run.model, cfg.init, hint_preset=cfg.preset is None))
    run.say(run.summary())
    if run.ddp.main and run.ddp.restart_warning():
        warnings.warn(run.ddp.restart_warning(), RuntimeWarning, stacklevel=2)
    notice = cpu_precision_notice(run.amp_dtype) if run.device.type == "cpu" else None
    if notice:
        run.say(f"note: {notice}")
    net = run.model
    if run.ddp.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    with _StopFlag() as stop, warnings.catch_warnings():
        if notice:  # said once above: not again by the blocks' first call, inside the progress bar
            warnings.filterwarnings("ignore", message=re.escape(notice))
        while p.epoch < cfg.epochs:
            start = time.time()
            if not run.train_epoch(net, stop):
                return {"interrupted": True, "epoch": p.epoch, "step": p.step}
            run.end_epoch(time.time() - start)
    return run.result
