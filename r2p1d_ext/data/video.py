"""Video files through OpenCV: which files are videos, their frame counts, and the frames of
one clip decoded with one seek and sequential reads."""
from __future__ import annotations

import os
import warnings
from typing import Dict, Tuple

# FFmpeg logs every damaged macroblock of a corrupt video (thousands of lines for one bad
# file, burying the dataset's one-line warning): quiet, unless the user set its level.
# OpenCV reads the variable when it first opens a file, so setting it here is in time.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")

# Decoder threads per opened video (0: FFmpeg's default, one per core). A DataLoader worker
# sets 1 (one_thread_per_worker): 14 workers x 16 threads on a 16-core machine only thrash.
_decoder_threads = 0


def one_thread_per_worker(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: one thread for each thread pool a worker runs (the
    video decoder, OpenCV's resize, torch's intra-op pool): the parallelism is the workers."""
    global _decoder_threads
    _decoder_threads = 1
    cv2.setNumThreads(1)
    import torch
    torch.set_num_threads(1)


def decoder_threads() -> int:
    """Threads each video capture opened in this process uses (0: FFmpeg's default)."""
    return _decoder_threads


def open_video(path: str) -> "cv2.VideoCapture":
    """cv2.VideoCapture of `path` with this process's decoder thread count."""
    if _decoder_threads:
        return cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, _decoder_threads])
    return cv2.VideoCapture(path)


class VideoDecodeError(RuntimeError):
    pass


def warn_line(message: str, where: str = "r2p1d_ext.data") -> None:
    """A RuntimeWarning printed as one line, ``<where>:0: RuntimeWarning: <message>``. A plain
    warnings.warn names the calling line and prints its source: inside a DataLoader worker
    that is torch's own fetch code, in a process pool the pool's, which says nothing to the
    user."""
    warnings.warn_explicit(message, RuntimeWarning, where, 0)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def probe_video(path: str) -> Tuple[int, float]:
    """(frames, frames per second) as the container reports them; the frames counted by
    decoding where it does not say; (0, 0.0) if the file cannot be opened."""
    cap = open_video(path)
    try:
        if not cap.isOpened():
            return 0, 0.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if n <= 0:  # some containers do not say: count by decoding
            n = 0
            while cap.grab():
                n += 1
        return n, fps if fps > 0 and fps == fps else 0.0
    finally:
        cap.release()


def probe_frame_count(path: str) -> int:
    """Frames in the video as its container reports them (0 if it cannot be opened)."""
    return probe_video(path)[0]


def read_frames(path: str, start: int, count: int, stride: int, total: int) -> np.ndarray:
    """(count, H, W, 3) RGB uint8 frames start, start+stride, ... (indices taken modulo the
    video length, so short videos loop). Decodes only the span it needs."""
    indices = [(start + k * stride) % total for k in range(count)]
    first, last = min(indices), max(indices)
    cap = open_video(path)
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"cannot open {path}")
        if first > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        decoded: Dict[int, np.ndarray] = {}
        wanted = set(indices)
        for idx in range(first, last + 1):
            ok, frame = cap.read()
            if not ok:
                break
            if idx in wanted:
                decoded[idx] = frame
    finally:
        cap.release()
    if not decoded:
        raise VideoDecodeError(f"no frame of {path} could be decoded from frame {first}")
    # A container that over-reports its length: loop over the frames that did decode.
    have = sorted(decoded)
    frames = [decoded[i] if i in decoded else decoded[have[i % len(have)]] for i in indices]
    out = []
    for f in frames:
        if f.ndim == 2:
            f = cv2.cvtColor(f, cv2.COLOR_GRAY2RGB)
        elif f.shape[2] == 4:
            f = cv2.cvtColor(f, cv2.COLOR_BGRA2RGB)
        else:
            f = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
        out.append(f)
    return np.stack(out)
