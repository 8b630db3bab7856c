"""Evaluation of a video classifier: clip-level loss and top-k, video-level accuracy (clip
scores averaged per video) and the confusion matrix; of a model in memory or of a
checkpoint."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.dataset import VideoDataset, count_failed, video_scores
from ..models import build_model
from . import checkpoint as ckpt
from .config import amp_dtype, resolve_device, use_channels_last


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> List[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top.eq(labels[:, None])
    return [int(hit[:, :min(k, k_max)].any(1).sum()) for k in ks]


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
    channels_last = use_channels_last(cfg.get("channels_last"), dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    loader = DataLoader(data_set, batch_size=batch_size, num_workers=workers)
    metrics = evaluate(model, loader, dev, amp_dtype(cfg.get("amp")), channels_last, len(state["classes"]),
                       progress=progress)
    return {"checkpoint": checkpoint, "split": split, "epoch": state["epoch"], "classes": state["classes"],
            "skipped_videos": len(data_set.unreadable) + metrics["val_failed_videos"], **metrics}
