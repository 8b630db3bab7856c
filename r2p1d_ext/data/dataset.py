"""Video dataset: the videos of one subset, listed by the folder layout
``root/{split}/{class}/{video files}`` or by the field's annotation files (UCF101, HMDB51,
Kinetics CSV, path lists: r2p1d_ext/data/annotations.py), decoded with PyAV (OpenCV for
files PyAV cannot open: r2p1d_ext/data/video.py).

Each item is ``(clip, label, video, failed)``: one clip of ``clip_len`` frames (every
``frame_stride``-th frame) as a uint8 tensor (clip_len, crop, crop, 3) of RGB pixels, as
torchvision's and PyTorchVideo's video datasets return them; its class; the index of its
video; and the index of a video that failed to decode at this item (-1 if none). The
float clip the network takes, (3, clip_len, crop, crop) normalised with the Kinetics
mean/std of torchvision's video models, is one call away:
``r2p1d_ext.ops.normalize_clips(clip, dataset.mean, dataset.std)``, on one clip or on a
batch, on its device (the trainer calls it on the GPU: a worker then ships a quarter of the
bytes and spends its time decoding). Only the clip's frames are decoded (a seek to the
keyframe before it, then decoding forward). Videos shorter than the clip are
looped, not dropped. Unreadable or corrupt files are skipped with a warning, never
crashing a worker or an epoch: those found at start-up are in ``unreadable``; one that
fails to decode later is reported through ``failed``, which reaches the main process
through any number of DataLoader workers (``count_failed`` counts them). Such an item is
never another video's clip: its clip is zeros and ``failed == video``; drop it, as the
trainer does (and ``r2p1d_ext.train.evaluate`` drops every clip of that video). Videos an
annotation file lists that are not under the root are in ``missing``, reported once.

Geometry: the frames are resized to ``short_side`` on their short side, or to exactly
``resize`` = (height, width) (torchvision's Kinetics weights: 128x171), then cropped to
``crop_size``. ``fps`` resamples every video to that frame rate first (torchvision's
resampling: output frame j is source frame floor(j * source fps / fps)).

Training clips: ``clips_per_video`` per video and epoch (torchvision's reference takes 5),
each with a random start (temporal jitter), with ``scale_jitter`` = (low, high) a random
short side in that range, a random crop and, with ``hflip``, a random horizontal flip.
Evaluation: ``clips_per_video`` uniformly spaced clips per video times ``crops`` spatial
crops (1: the centre; 3: both ends and the centre of the long side, as MMAction2's
ThreeCrop); average the item scores per video with :func:`video_scores` for video-level
accuracy.

Start-up: the frame count of every video is needed up front. A folder made by ``r2p1d
prepare`` carries them in its manifest (``root/manifest.json``), which is used by default
(``manifest="auto"``); files it does not describe (added or replaced later) are opened and
probed, as every file is without a manifest. Hidden files (names starting with '.', such as
``prepare``'s half-written temporaries or macOS ``._`` files) are not videos.

Note: horizontal flips change the meaning of left/right motion; turn ``hflip`` off for
classes defined by direction (the built-in synthetic set).
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .._args import KINETICS_MEAN, KINETICS_STD
from . import manifest as manifest_file
from .annotations import Listing, read_annotations
from .video import (READERS, VIDEO_EXTENSIONS, DecodeStats, VideoDecodeError, clip_indices, is_hidden, probe_video,
                    read_frames_at, warn_line)


Size = Union[int, Tuple[int, int]]  # a short side, or an exact (height, width)


def folder_listing(root: str, split: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Listing:
    """The videos of the folder layout ``root/split/<class>/<video>``: classes are the
    sub-folders in alphabetical order; a class folder without videos is an error."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        hint = ""
        name = os.path.basename(os.path.normpath(root))
        if name in ("train", "val", "test") and os.path.isdir(os.path.join(os.path.dirname(
                os.path.normpath(root)), split)):
            hint = (f" ({root} looks like a split itself: the dataset root is the folder that holds "
                    f"train/ and val/, i.e. {os.path.dirname(os.path.normpath(root)) or '.'})")
        raise FileNotFoundError(f"expected a folder {split_dir} holding one sub-folder per class{hint} (or "
                                "annotation files: --annotations)")
    classes = sorted(d for d in os.listdir(split_dir)
                     if os.path.isdir(os.path.join(split_dir, d)) and not is_hidden(d))
    if not classes:
        raise ValueError(f"{split_dir} holds no class folders (expected {split_dir}/<class>/<video>)")
    exts = tuple(e.lower() for e in extensions)
    videos = []
    for label, cls in enumerate(classes):
        folder = os.path.join(split_dir, cls)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(exts) and not is_hidden(f))
        if not files:
            raise ValueError(f"class folder {folder} holds no video files (extensions {', '.join(exts)})")
        videos += [(os.path.join(folder, name), label) for name in files]
    return Listing(classes, videos, [], split_dir)


class VideoDataset(Dataset):
    def __init__(self, root: str, split: str = "train", clip_len: int = 16, frame_stride: int = 1,
                 short_side: int = 128, crop_size: int = 112, train: Optional[bool] = None,
                 hflip: bool = True, clips_per_video: int = 1,
                 mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS, seed: Optional[int] = None,
                 manifest: Union[str, None] = "auto", reader: str = "auto",
                 annotations: Optional[str] = None, fold: int = 1, annotation_format: str = "auto",
                 classes: Optional[Sequence[str]] = None, resize: Optional[Tuple[int, int]] = None,
                 fps: Optional[float] = None, scale_jitter: Optional[Tuple[int, int]] = None, crops: int = 1):
        """The videos of subset `split` ("train", "val", "test": a folder under `root`, or with
        `annotations` the subset of official split `fold` those files list, found under
        `root`; `annotation_format` as r2p1d_ext.data.annotations.read_annotations takes it,
        `classes` a fixed class list, e.g. a checkpoint's)."""
        if clip_len < 1 or frame_stride < 1 or clips_per_video < 1 or crops < 1:
            raise ValueError(f"expected clip_len, frame_stride, clips_per_video and crops >= 1, got "
                             f"{clip_len}, {frame_stride}, {clips_per_video}, {crops}")
        if reader not in READERS:
            raise ValueError(f"expected reader to be one of {READERS}, got {reader!r}")
        self.train = split == "train" if train is None else train
        smallest = min(resize) if resize is not None else short_side
        if scale_jitter is not None:
            low, high = scale_jitter
            if not 1 <= low <= high:
                raise ValueError(f"expected scale_jitter (low, high) with 1 <= low <= high, got {scale_jitter}")
            smallest = low if self.train else smallest
        if crop_size > smallest:
            what = ("the resize's smaller side" if resize is not None else
                    "scale_jitter's low end" if scale_jitter is not None and self.train else "short_side")
            raise ValueError(f"expected crop_size <= {what}, got crop {crop_size} > {smallest}")
        if fps is not None and not fps > 0:
            raise ValueError(f"expected fps to be a positive number or None, got {fps!r}")
        if crops > 1 and self.train:
            raise ValueError(f"spatial test crops ({crops}) are for evaluation: training takes random crops")
        if annotations is None:
            listing = folder_listing(root, split, extensions)
            if classes is not None and listing.classes != list(classes):
                raise ValueError(f"{root}/{split} has classes {listing.classes}, expected {list(classes)}")
        else:
            listing = read_annotations(annotations, root, split, fold, annotation_format, classes, extensions)
        self.classes = listing.classes
        self.listing, self.missing = listing.source, listing.missing
        if listing.missing:
            shown = ", ".join(listing.missing[:3]) + (", ..." if len(listing.missing) > 3 else "")
            warn_line(f"{len(listing.missing)} of {len(listing.missing) + len(listing.videos)} {split} videos listed "
                      f"in {listing.source} are not under {root}: left out ({shown})")
        self.empty_classes = listing.empty_classes() if annotations is not None else []
        if self.empty_classes:
            warn_line(f"{len(self.empty_classes)} of {len(self.classes)} classes have no {split} video here: "
                      f"{', '.join(self.empty_classes[:5])}{', ...' if len(self.empty_classes) > 5 else ''}")
        rows = manifest_file.rows_by_output(_read_manifest(root, manifest))
        self.videos: List[Tuple[str, int, int]] = []  # (path, label, frames)
        self.rates: List[float] = []  # frames per second of each video (0: unknown)
        self.unreadable: List[str] = []  # found at start-up
        self.probed = 0  # files opened at start-up (those the manifest did not describe)
        for path, label in listing.videos:
            row = rows.get(os.path.relpath(path, root).replace(os.sep, "/"))
            if manifest_file.row_matches(row, path) and (fps is None or row.get("fps")):
                self.videos.append((path, label, row["frames"]))
                self.rates.append(float(row.get("fps") or 0.0))
                continue
            n, rate = probe_video(path)
            self.probed += 1
            if n <= 0:
                _warn_skip(path, "it cannot be opened or holds no frames")
                self.unreadable.append(path)
            else:
                self.videos.append((path, label, n))
                self.rates.append(rate)
        if not self.videos:
            raise ValueError(f"no readable video in {listing.source} ({len(self.unreadable)} unreadable, "
                             f"{len(listing.missing)} missing)")
        self.split, self.clip_len, self.frame_stride, self.fps = split, clip_len, frame_stride, fps
        # Source frames per frame of the sampled timeline (1: every frame, no resampling).
        self.steps = [1.0 if fps is None or rate <= 0 else rate / fps for rate in self.rates]
        if fps is not None and any(rate <= 0 for rate in self.rates):
            warn_line(f"{sum(rate <= 0 for rate in self.rates)} {split} videos do not say their frame rate: "
                      f"their frames are taken as they come, not resampled to {fps:g} fps")
        span = (clip_len - 1) * frame_stride + 1
        self.short_videos = sum(self.timeline(v) < span for v in range(len(self.videos)))  # looped
        if self.short_videos:
            warn_line(f"{self.short_videos} of {len(self.videos)} {split} videos are shorter than a clip of {span} "
                      f"frames (clip_len {clip_len}, frame_stride {frame_stride}): their frames are looped to fill "
                      "it; a shorter clip (--clip-len) avoids that")
        self.short_side, self.crop_size, self.resize = short_side, crop_size, None if resize is None else tuple(resize)
        self.scale_jitter = None if scale_jitter is None else tuple(scale_jitter)
        self.hflip, self.clips_per_video, self.crops = hflip, clips_per_video, crops
        self.mean, self.std = tuple(mean), tuple(std)
        self.reader = reader
        self.stats: Optional[DecodeStats] = None  # a DecodeStats sums what this process's reads cost
        self.seed, self.epoch = seed, 0
        self._failed: set = set()  # indices of videos that failed to decode in this process

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_skipped(self) -> int:
        """Videos skipped so far as this process knows: unreadable at start-up, plus those
        that failed to decode here (DataLoader workers report theirs through the items'
        ``failed`` field instead: see ``count_failed``)."""
        return len(self.unreadable) + len(self._failed)

    @property
    def items_per_video(self) -> int:
        """Consecutive items of one video: its clips times the spatial crops of each."""
        return self.clips_per_video * self.crops

    def set_epoch(self, epoch: int) -> None:
        """With a seed, augmentation is a function of (seed, epoch, index): reproducible
        (and resumable) runs that still see new crops every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos) * self.items_per_video

    # ------------------------------------------------------------------ sampling
    def timeline(self, video: int) -> int:
        """Frames of the video after resampling to ``fps`` (its frame count without)."""
        return resampled_frames(self.videos[video][2], self.steps[video])

    def clip_start(self, frames: int, clip: int, rng: np.random.Generator) -> int:
        if self.train:
            span = (self.clip_len - 1) * self.frame_stride + 1
            return int(rng.integers(0, max(0, frames - span) + 1))
        return clip_starts(frames, self.clip_len, self.frame_stride, self.clips_per_video)[clip]

    def __getitem__(self, item: Union[int, Tuple[int, int]]):
        """(clip, label, video index, index of a video that failed here or -1). `item` is an
        index, or an (index, epoch) pair: the epoch then seeds the augmentation instead of
        set_epoch's (a persistent DataLoader worker's copy of the dataset never sees
        set_epoch; the trainer's sampler gives pairs)."""
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        rng = np.random.default_rng(None if self.seed is None else (self.seed, epoch, index))
        video, rest = divmod(index, self.items_per_video)
        clip, crop = divmod(rest, self.crops)
        path, label, frames = self.videos[video]
        if video not in self._failed:
            try:
                start = self.clip_start(self.timeline(video), clip, rng)
                size: Size = self.resize or self.short_side
                if self.train and self.scale_jitter is not None:
                    size = int(rng.integers(self.scale_jitter[0], self.scale_jitter[1] + 1))
                indices = source_indices(start, self.clip_len, self.frame_stride, frames, self.steps[video])
                clip = read_clip(path, indices, size, self.crop_size, rng if self.train else None, self.hflip,
                                 self.reader, self.stats, (crop, self.crops))
                return torch.from_numpy(clip), label, video, -1
            except (VideoDecodeError, cv2.error, av.FFmpegError) as err:
                # Once per video and process: later clips of it are not tried again.
                self._failed.add(video)
                _warn_skip(path, str(err))
        # Never another video's clip under this one's id and label: a flagged blank.
        c = self.crop_size
        return torch.zeros(self.clip_len, c, c, 3, dtype=torch.uint8), label, video, video


def resampled_frames(frames: int, step: float) -> int:
    """Frames of a `frames`-frame video resampled by taking a source frame every `step`."""
    return frames if step == 1.0 else max(1, int(frames / step))


def source_indices(start: int, count: int, stride: int, frames: int, step: float = 1.0) -> List[int]:
    """The source frames of a clip starting at `start` of the resampled timeline (a source
    frame every `step`, torchvision's floor(j * step)), every `stride`-th, looped over a
    short video; with step 1 the frames start, start + stride, ... (clip_indices)."""
    if step == 1.0:
        return clip_indices(start, count, stride, frames)
    total = resampled_frames(frames, step)
    return [min(frames - 1, int(((start + k * stride) % total) * step)) for k in range(count)]


def clip_starts(frames: int, clip_len: int, frame_stride: int, clips: int) -> List[int]:
    """The first frames of `clips` evaluation clips of a `frames`-frame video: uniformly
    spaced from its start to its last full clip (one clip: the centred one)."""
    room = max(0, frames - ((clip_len - 1) * frame_stride + 1))
    if clips == 1:
        return [room // 2]
    return [round(c * room / (clips - 1)) for c in range(clips)]


def resized_size(height: int, width: int, size: Size) -> Tuple[int, int]:
    """(height, width) of a frame resized to `size`: a short side (the aspect ratio kept) or
    an exact (height, width)."""
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def crop_origin(height: int, width: int, crop_size: int, rng: Optional[np.random.Generator],
                position: Tuple[int, int] = (0, 1)) -> Tuple[int, int]:
    """(top, left) of the crop: random with `rng`; else crop `position` = (p, n) of n spread
    along the long side from its start to its end, centred across it (n = 1: the centre)."""
    if rng is not None:
        return int(rng.integers(0, height - crop_size + 1)), int(rng.integers(0, width - crop_size + 1))
    p, n = position
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    if n > 1:
        along = round(p * ((width if width >= height else height) - crop_size) / (n - 1))
        top, left = (top, along) if width >= height else (along, left)
    return top, left


def _flip(clip: np.ndarray, rng: Optional[np.random.Generator], hflip: bool) -> np.ndarray:
    """With `hflip` (training only), a horizontal flip half the time; contiguous."""
    if rng is not None and hflip and rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    return np.ascontiguousarray(clip)


def resize_crop(frames: np.ndarray, size: Size, crop_size: int, rng: Optional[np.random.Generator] = None,
                hflip: bool = False, position: Tuple[int, int] = (0, 1)) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, crop, crop, 3) uint8, contiguous: resized to `size` (a short
    side or an exact (height, width); area averaging when shrinking, bilinear when
    enlarging; nothing to do for a video prepared at this size), then crop `position`
    (crop_origin; rng None: evaluation) or a random crop and, with `hflip`, a random flip."""
    _, h, w, _ = frames.shape
    nh, nw = resized_size(h, w, size)
    if (nh, nw) == (h, w):
        resized = frames
    else:
        shrink = nh * nw < h * w
        resized = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                            for f in frames])
    top, left = crop_origin(nh, nw, crop_size, rng, position)
    return _flip(resized[:, top:top + crop_size, left:left + crop_size], rng, hflip)


def read_clip(path: str, indices: Sequence[int], size: Size, crop_size: int,
              rng: Optional[np.random.Generator] = None, hflip: bool = False, reader: str = "auto",
              stats: Optional[DecodeStats] = None, position: Tuple[int, int] = (0, 1)) -> np.ndarray:
    """One clip as a dataset item holds it: the frames at `indices` (read_frames_at), then
    resize_crop's result, with the same random draws. Where the video needs no resizing
    (prepared at this size) only the crop's pixels are converted to RGB (read_frames' region)."""
    cropped = []

    def region(height: int, width: int):
        if resized_size(height, width, size) != (height, width):
            return None
        cropped.append(True)
        return crop_origin(height, width, crop_size, rng, position) + (crop_size, crop_size)

    frames = read_frames_at(path, indices, reader, stats, region)
    return _flip(frames, rng, hflip) if cropped else resize_crop(frames, size, crop_size, rng, hflip, position)


def _read_manifest(root: str, manifest: Union[str, None]):
    """The manifest document to take frame counts from, or None. "auto": root's, if any (an
    unreadable one is ignored with a warning: the files are probed instead); a path: that
    file, which must be readable; None: no manifest."""
    if manifest is None:
        return None
    if manifest == "auto":
        path = manifest_file.path_in(root)
        if not os.path.exists(path):
            return None
        try:
            return manifest_file.read(path)
        except (OSError, manifest_file.ManifestError) as err:
            warnings.warn(f"ignoring {path} ({err}); probing every video instead", RuntimeWarning, stacklevel=4)
            return None
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"expected manifest to be 'auto', None or a manifest file, got {manifest!r} "
                                "(no such file)")
    return manifest_file.read(manifest)


def _warn_skip(path: str, why: str) -> None:
    """One line (warn_line): ``r2p1d_ext.data:0: RuntimeWarning: skipping video ...``."""
    warn_line(f"skipping video {path}: {why}")


def count_failed(failed: torch.Tensor, seen: set) -> None:
    """Adds a batch's ``failed`` indices (-1: none) to `seen`: the distinct videos that
    failed to decode, whichever worker met them."""
    seen.update(int(v) for v in failed[failed >= 0].tolist())


def video_scores(scores: torch.Tensor, video_ids: torch.Tensor, labels: torch.Tensor):
    """Average clip scores (N, classes) per video: (video scores, video labels)."""
    ids, inverse = torch.unique(video_ids, return_inverse=True)
    summed = torch.zeros(len(ids), scores.shape[1], dtype=scores.dtype).index_add_(0, inverse, scores)
    counts = torch.bincount(inverse, minlength=len(ids)).clamp_min(1).to(scores.dtype)
    video_labels = torch.zeros(len(ids), dtype=labels.dtype).scatter_(0, inverse, labels)
    return summed / counts[:, None], video_labels
