"""Classifying video files with a trained model (``r2p1d predict``).

Video-level prediction is evaluation's: the checkpoint's clip length, frame stride, frame
rate, size (short side or exact resize), centre crop and normalisation; ``clips`` uniformly spaced clips per video whose
softmax scores are averaged. With ``window_stride`` (seconds) a long video is classified
window by window instead: one clip every ``window_stride`` seconds along the whole video,
each with its start and end time, so the output says what happens when.

Decoding runs in DataLoader workers (one item: up to ``CHUNK`` clips of one video), while
the network takes batches of ``batch_size`` clips gathered across videos; with workers the
next videos decode while the network runs. An unreadable or truncated video is reported
(a warning, a row with its error, a count) and the others go on.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import av
import cv2
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.dataset import clip_starts, read_clip, resampled_frames, source_indices
from ..data.video import VIDEO_EXTENSIONS, VideoDecodeError, is_hidden, probe_video, warn_line
from ..models.loading import LoadedModel
from .config import amp_dtype, resolve_device, use_channels_last
from .inputs import network_input

CHUNK = 16  # clips per decoded item: bounds a worker's memory on long videos in window mode


def find_videos(inputs: Sequence[str]) -> List[str]:
    """Every video file named, or found (recursively, by extension, hidden names skipped)
    under a folder named, in order, each once. A path that does not exist is an error."""
    out: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for folder, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not is_hidden(d))
                found += [os.path.join(folder, f) for f in files
                          if f.lower().endswith(VIDEO_EXTENSIONS) and not is_hidden(f)]
            out += sorted(found)
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise FileNotFoundError(f"no such video file or folder: {item}")
    seen = set()
    return [p for p in out if not (p in seen or seen.add(p))]


@dataclasses.dataclass
class _Plan:
    """The clips of one video: their first frames on its timeline (resampled to the model's
    frame rate, when it has one), its source frame count, the timeline's frame rate and the
    source frames per timeline frame."""
    path: str
    frames: int = 0
    fps: float = 0.0
    starts: List[int] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    step: float = 1.0


def plan_clips(path: str, clip_len: int, frame_stride: int, clips: int,
               window_stride: Optional[float], fps: Optional[float] = None) -> _Plan:
    """Where the clips of `path` start: `clips` uniformly spaced ones (as evaluation takes
    them), or one every `window_stride` seconds from the start to the last full clip; on the
    video resampled to `fps` when given (the model's preprocessing)."""
    frames, rate = probe_video(path)
    if frames <= 0:
        return _Plan(path, error="cannot be opened or holds no frames")
    step = rate / fps if fps and rate > 0 else 1.0
    timeline, rate = resampled_frames(frames, step), (fps if step != 1.0 else rate)
    if window_stride is None:
        return _Plan(path, frames, rate, clip_starts(timeline, clip_len, frame_stride, clips), step=step)
    if rate <= 0:
        return _Plan(path, frames, rate, error="its frame rate is unknown, so windows have no times")
    span = (clip_len - 1) * frame_stride + 1
    every = max(1, round(window_stride * rate))
    return _Plan(path, frames, rate, list(range(0, max(1, timeline - span + 1), every)), step=step)


class _Clips(Dataset):
    """Item i: up to CHUNK clips of one video, decoded and transformed, or its error."""

    def __init__(self, plans: List[_Plan], config: Dict[str, Any]):
        self.plans, self.cfg = plans, config
        self.items = [(v, plan.starts[i:i + CHUNK]) for v, plan in enumerate(plans) if plan.error is None
                      for i in range(0, len(plan.starts), CHUNK)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        video, starts = self.items[index]
        plan, cfg = self.plans[video], self.cfg
        size = tuple(cfg["resize"]) if cfg.get("resize") else cfg["short_side"]
        try:
            clips = [torch.from_numpy(read_clip(plan.path, source_indices(s, cfg["clip_len"], cfg["frame_stride"],
                                                                           plan.frames, plan.step),
                                                size, cfg["crop_size"])) for s in starts]
            return {"video": video, "starts": torch.tensor(starts), "clips": torch.stack(clips), "error": ""}
        except (VideoDecodeError, cv2.error, av.FFmpegError) as err:
            return {"video": video, "starts": torch.tensor(starts), "clips": torch.empty(0), "error": str(err)}


@dataclasses.dataclass
class Prediction:
    """One video's result: ``top`` [(class, probability)] of the averaged clip scores, or,
    in window mode, ``windows`` [(start s, end s, top)]; ``error`` when it could not be read."""
    video: str
    top: List[Tuple[str, float]] = dataclasses.field(default_factory=list)
    clips: int = 0
    windows: List[Tuple[float, float, List[Tuple[str, float]]]] = dataclasses.field(default_factory=list)
    error: Optional[str] = None


def _batches(loader, batch_size: int) -> Iterator[Tuple[torch.Tensor, List[Tuple[int, int]], List[Dict]]]:
    """Clips regrouped into network batches of `batch_size` across videos: (clips, [(video,
    start)] of each clip, the failed items seen since the last batch)."""
    pending, keys, failed = [], [], []
    count = 0
    for item in loader:
        if item["error"]:
            failed.append(item)
            continue
        pending.append(item["clips"])
        keys += [(int(item["video"]), int(s)) for s in item["starts"]]
        count += len(item["clips"])
        while count >= batch_size:
            clips = torch.cat(pending)
            yield clips[:batch_size], keys[:batch_size], failed
            pending, keys, failed = [clips[batch_size:]], keys[batch_size:], []
            count -= batch_size
    if count or failed:
        yield (torch.cat(pending) if count else torch.empty(0)), keys, failed


@torch.no_grad()
def predict(loaded: LoadedModel, videos: Sequence[str], clips: int = 10, window_stride: Optional[float] = None,
            top_k: int = 5, batch_size: int = 16, workers: int = 2, device: Optional[str] = None,
            amp: Optional[str] = None, progress: bool = True) -> List[Prediction]:
    """Classify each of `videos` with `loaded` (``models.load_model``): see the module's
    docstring. One Prediction per video, in order; a video that could not be read has its
    ``error`` set (and a warning)."""
    if clips < 1 or top_k < 1 or batch_size < 1 or workers < 0:
        raise ValueError(f"expected clips, top_k, batch_size >= 1 and workers >= 0, got {clips}, {top_k}, "
                         f"{batch_size}, {workers}")
    if window_stride is not None and not window_stride > 0:
        raise ValueError(f"expected a window stride > 0 seconds, got {window_stride}")
    cfg, classes = loaded.config, loaded.classes
    dev = resolve_device(device)
    channels_last = use_channels_last(cfg.get("channels_last"), dev)
    model = loaded.model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    dtype = amp_dtype(amp)
    plans = [plan_clips(v, cfg["clip_len"], cfg["frame_stride"], clips, window_stride, cfg.get("fps")) for v in videos]
    data = _Clips(plans, cfg)
    loader = DataLoader(data, batch_size=None, num_workers=workers)
    scores: Dict[int, Dict[int, torch.Tensor]] = {v: {} for v in range(len(plans))}
    bar = tqdm(total=sum(len(p.starts) for p in plans if p.error is None), desc="predict", unit="clip",
               disable=not progress)
    for batch, keys, failed in _batches(loader, batch_size):
        for item in failed:
            plans[int(item["video"])].error = plans[int(item["video"])].error or str(item["error"])
        if not keys:
            continue
        batch = network_input(batch, dev, next(model.parameters()).dtype, channels_last)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            probs = model(batch).float().softmax(1).cpu()
        for (video, start), p in zip(keys, probs):
            scores[video][start] = p
        bar.update(len(keys))
    bar.close()
    k = min(top_k, len(classes))

    def top(p: torch.Tensor) -> List[Tuple[str, float]]:
        values, index = p.topk(k)
        return [(classes[int(i)], float(v)) for v, i in zip(values, index)]

    out = []
    span = (cfg["clip_len"] - 1) * cfg["frame_stride"] + 1
    for v, plan in enumerate(plans):
        if plan.error is not None:
            warn_line(f"skipping video {plan.path}: {plan.error}", "r2p1d_ext.predict")
            out.append(Prediction(plan.path, error=plan.error))
        elif window_stride is None:
            got = scores[v]
            out.append(Prediction(plan.path, top(torch.stack(list(got.values())).mean(0)), clips=len(got)))
        else:
            end = resampled_frames(plan.frames, plan.step)
            wins = [(s / plan.fps, min(s + span, end) / plan.fps, top(p)) for s, p in sorted(scores[v].items())]
            out.append(Prediction(plan.path, wins[0][2] if wins else [], clips=len(wins), windows=wins))
    return out


def write_predictions(predictions: Sequence[Prediction], path: str) -> None:
    """JSON lines (one object per video) or, for a .csv path, one row per video (per window
    in window mode) and rank."""
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video", "start_s", "end_s", "rank", "class", "probability", "error"])
            for p in predictions:
                if p.error is not None:
                    w.writerow([p.video, "", "", "", "", "", p.error])
                rows = p.windows or [(None, None, p.top)]
                for start, end, top in rows:
                    for rank, (name, prob) in enumerate(top, 1):
                        w.writerow([p.video, "" if start is None else f"{start:.3f}",
                                    "" if end is None else f"{end:.3f}", rank, name, f"{prob:.6f}", ""])
        return
    with open(path, "w") as f:
        for p in predictions:
            row: Dict[str, Any] = {"video": p.video}
            if p.error is not None:
                row["error"] = p.error
            else:
                row["clips"] = p.clips
                row["top"] = [{"class": c, "probability": round(v, 6)} for c, v in p.top]
                if p.windows:
                    row["windows"] = [{"start": round(s, 3), "end": round(e, 3),
                                       "top": [{"class": c, "probability": round(v, 6)} for c, v in t]}
                                      for s, e, t in p.windows]
            f.write(json.dumps(row) + "\n")


def format_table(predictions: Sequence[Prediction], shown: int = 3) -> str:
    """A readable table: per video its top classes, per window in window mode."""
    lines = []
    for p in predictions:
        if p.error is not None:
            lines.append(f"{p.video}  ERROR: {p.error}")
            continue
        if p.windows:
            lines.append(f"{p.video}  ({len(p.windows)} windows)")
            for s, e, t in p.windows:
                lines.append(f"  {s:8.2f}-{e:8.2f} s  " + "  ".join(f"{c} {v:.3f}" for c, v in t[:shown]))
        else:
            lines.append(f"{p.video}  " + "  ".join(f"{c} {v:.3f}" for c, v in p.top[:shown])
                         + f"  ({p.clips} clip{'' if p.clips == 1 else 's'})")
    return "\n".join(lines)
