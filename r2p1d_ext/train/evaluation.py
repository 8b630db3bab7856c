"""Evaluation of a video classifier: clip-level loss and top-1/top-5, video-level top-1,
top-5 and mean class accuracy (clip scores averaged per video) and the confusion matrix; of
a model in memory (on one process, or sharded over the ranks of a run) or of a checkpoint.

Sharded, each rank scores its batches of whole videos (``distributed.VideoBatches``) and the
per-clip and per-video results are gathered on every rank, so the metrics are those of one
process to the bit: each clip is scored in the same batch, each video's clips averaged in
the same order on one rank, and the clip losses summed exactly (``math.fsum``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.dataset import VideoDataset, count_failed
from .inputs import network_input
from ..data.video import one_thread_per_worker
from ..models.loading import LoadedModel, load_model
from .config import amp_dtype, resolve_device, use_channels_last
from .distributed import Dist, VideoBatches


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N, min(k, classes)) booleans: whether row i's j-th best class is its label (so
    ``[:, 0]`` is the top-1 hit and ``.any(1)`` the top-k hit)."""
    return scores.topk(min(k, scores.shape[1]), dim=1).indices.eq(labels[:, None])


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> List[int]:
    hit = topk_hits(logits, labels, max(ks))
    return [int(hit[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def score_clips(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
                channels_last: bool = False, progress: bool = False, dtype: Optional[torch.dtype] = None
                ) -> Dict[str, Any]:
    """This process's share of an evaluation: per clip (video, loss, top-1 hit, top-5 hit),
    per video (label, sum of its clips' softmax scores, clip count), and the videos that
    failed to decode. `dtype`: the clips' (the model's; default float32)."""
    model.eval()
    clips_out: List[tuple] = []
    videos: Dict[int, list] = {}
    failed: set = set()
    for clips, y, v, bad in tqdm(loader, desc="eval", leave=False, disable=not progress):
        count_failed(bad, failed)
        data = loader.dataset
        clips = network_input(clips, device, dtype or torch.float32, channels_last, data.mean, data.std)
        y = y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(clips)
        logits = logits.float()
        losses = F.cross_entropy(logits, y, reduction="none").cpu().tolist()
        scores = logits.softmax(1).cpu()
        hits = topk_hits(scores, y.cpu())
        for i, (video, label) in enumerate(zip(v.tolist(), y.cpu().tolist())):
            clips_out.append((video, losses[i], bool(hits[i, 0]), bool(hits[i].any())))
            entry = videos.setdefault(video, [label, torch.zeros_like(scores[i]), 0])
            entry[1] += scores[i]
            entry[2] += 1
    return {"clips": clips_out, "videos": videos, "failed": failed}


def metrics_of(parts: List[Dict[str, Any]], num_classes: int) -> Dict[str, Any]:
    """The metrics of the gathered shares of score_clips (in rank order). A video any of
    whose clips failed to decode is left out of every metric (never replaced by another
    video's clips) and counted in ``val_failed_videos``."""
    failed = set().union(*(p["failed"] for p in parts))
    clips = [c for p in parts for c in p["clips"] if c[0] not in failed]
    if not clips:
        raise RuntimeError(f"every evaluation video failed to decode ({len(failed)} videos)")
    videos: Dict[int, list] = {}
    for p in parts:
        for video, (label, summed, count) in p["videos"].items():
            if video in failed:
                continue
            if video in videos:  # clips of one video on several ranks (not with VideoBatches)
                videos[video][1] = videos[video][1] + summed
                videos[video][2] += count
            else:
                videos[video] = [label, summed, count]
    order = sorted(videos)
    labels = torch.tensor([videos[v][0] for v in order])
    means = torch.stack([videos[v][1] / videos[v][2] for v in order])
    pred = means.argmax(1)
    top5 = topk_hits(means, labels).any(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diagonal().double() / confusion.sum(1).clamp_min(1).double()
    present = confusion.sum(1) > 0
    n = len(clips)
    return {"val_loss": math.fsum(c[1] for c in clips) / n,
            "val_top1": sum(c[2] for c in clips) / n, "val_top5": sum(c[3] for c in clips) / n,
            "val_video_top1": float((pred == labels).double().mean()),
            "val_video_top5": float(top5.double().mean()),
            "val_mean_class_acc": float(per_class[present].mean()),
            "val_videos": len(order), "val_failed_videos": len(failed), "confusion": confusion.tolist()}


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
             channels_last: bool = False, num_classes: Optional[int] = None, progress: bool = False,
             ddp: Optional[Dist] = None) -> Dict[str, Any]:
    """The metrics of `model` on `loader`'s clips (metrics_of). Under a run of several
    processes (`ddp`), `loader` holds this rank's share and every rank gets the metrics of
    all shares."""
    first = next(model.parameters(), None)
    part = score_clips(model, loader, device, amp_dtype, channels_last, progress,
                       torch.float64 if first is not None and first.dtype == torch.float64 else None)
    parts = ddp.gather(part) if ddp is not None else [part]
    if num_classes is None:
        num_classes = next(len(s[1]) for p in parts for s in p["videos"].values())
    return metrics_of(parts, num_classes)


def video_loader(data_set: VideoDataset, batch_size: int, workers: int, rank: int = 0, world: int = 1,
                 pin_memory: bool = False, prefetch: int = 2, persistent: bool = False) -> DataLoader:
    """The evaluation loader of `data_set`: batches of whole videos (VideoBatches), rank
    `rank`'s share of `world`, one decoder thread per worker."""
    batches = VideoBatches(len(data_set.videos), data_set.items_per_video, batch_size, rank, world)
    extra = dict(prefetch_factor=prefetch, persistent_workers=persistent) if workers else {}
    return DataLoader(data_set, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=one_thread_per_worker if workers else None, **extra)


def evaluate_checkpoint(data: str, checkpoint: str, subset: str = "val", batch_size: int = 8,
                        workers: int = 2, eval_clips: Optional[int] = None, device: Optional[str] = None,
                        progress: bool = True, eval_crops: Optional[int] = None, annotations: Optional[str] = None,
                        fold: Optional[int] = None, annotation_format: Optional[str] = None) -> Dict[str, Any]:
    """Metrics of a checkpoint's model (``checkpoint.pt`` or ``best.pt`` of a run): evaluate_model."""
    return evaluate_model(load_model(checkpoint), data, subset, batch_size, workers, eval_clips, device, progress,
                          eval_crops, annotations, fold, annotation_format, checkpoint)


def evaluate_model(loaded: LoadedModel, data: str, subset: str = "val", batch_size: int = 8, workers: int = 2,
                   eval_clips: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
                   eval_crops: Optional[int] = None, annotations: Optional[str] = None, fold: Optional[int] = None,
                   annotation_format: Optional[str] = None, name: str = "") -> Dict[str, Any]:
    """Metrics of a trained model (models.load_model: a checkpoint, or torchvision weights
    run with their preset's preprocessing) on the videos of `subset`: the folder
    ``data/subset``, or those `annotations` list for it (by default the files, split and
    format the run trained with). Clips and crops per video as given, else the run's."""
    cfg = loaded.config
    dev = resolve_device(device)
    if annotations is None:
        annotations = cfg.get("annotations")
        fold = fold or cfg.get("fold", 1)
        annotation_format = annotation_format or cfg.get("annotation_format", "auto")
    data_set = VideoDataset(data, subset, clip_len=cfg["clip_len"], frame_stride=cfg["frame_stride"],
                            short_side=cfg["short_side"], crop_size=cfg["crop_size"], resize=cfg.get("resize"),
                            fps=cfg.get("fps"), clips_per_video=eval_clips or cfg["eval_clips"], train=False,
                            crops=eval_crops or cfg.get("eval_crops", 1), annotations=annotations,
                            fold=fold or 1, annotation_format=annotation_format or "auto",
                            classes=loaded.classes if annotations else None)
    if data_set.classes != loaded.classes:
        raise ValueError(f"{name or 'the model'} was trained on classes {loaded.classes}, {data}/{subset} has "
                         f"{data_set.classes}")
    dtype = torch.float64 if cfg.get("dtype") == "float64" else torch.float32
    model = loaded.model.to(device=dev, dtype=dtype)
    channels_last = use_channels_last(cfg.get("channels_last"), dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    loader = video_loader(data_set, batch_size, workers, pin_memory=dev.type == "cuda")
    metrics = evaluate(model, loader, dev, amp_dtype(cfg.get("amp")), channels_last,
                       len(loaded.classes), progress=progress)
    return {"checkpoint": name, "subset": subset, "epoch": loaded.epoch, "classes": loaded.classes,
            "clips_per_video": data_set.clips_per_video, "crops": data_set.crops,
            "skipped_videos": len(data_set.unreadable) + metrics["val_failed_videos"],
            "missing_videos": len(data_set.missing), **metrics}
