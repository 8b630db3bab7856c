"""Video files: which files are videos, their frame counts, and the frames of one clip.

Two readers (docs/data_preparation.md, "Reading a clip"):

- **PyAV** (FFmpeg's libavcodec, what torchvision.io and PyTorchVideo decode with), the
  default: seeks to the keyframe at or before the clip's first frame, decodes forward only
  to its last one, and maps each decoded frame to its index by its timestamp. Frames leave
  the decoder as YUV 4:2:0 and become RGB in one OpenCV conversion (libswscale's RGB
  conversion costs ~6x more per frame here: bench/NOTES.md). A file whose timestamps do not
  place the frames, or whose seek lands past the clip, is read forward from its start.
- **OpenCV** (cv2.VideoCapture): the fallback for files PyAV cannot open, and selectable
  (``reader="opencv"``) for comparison.

A DataLoader worker calls :func:`one_thread_per_worker`: one decoder thread per open file,
as the workers are the parallelism.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# FFmpeg logs every damaged macroblock of a corrupt video (thousands of lines for one bad
# file, burying the dataset's one-line warning): quiet, unless the user set its level.
# OpenCV reads the variable when it first opens a file, so setting it here is in time.
# (PyAV keeps FFmpeg's log off unless av.logging is configured.)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

Box = Tuple[int, int, int, int]  # top, left, height, width
Region = Callable[[int, int], Optional[Box]]  # (frame height, width) -> the box to keep, or None: all

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
READERS = ("auto", "pyav", "opencv")

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
    """Threads each video opened in this process decodes with (0: FFmpeg's default)."""
    return _decoder_threads


def open_video(path: str) -> "cv2.VideoCapture":
    """cv2.VideoCapture of `path` with this process's decoder thread count."""
    if _decoder_threads:
        return cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, _decoder_threads])
    return cv2.VideoCapture(path)


class VideoDecodeError(RuntimeError):
    pass


@dataclass
class DecodeStats:
    """What reading clips cost, summed over the reads given it (bench/bench_data.py prints
    it). ``decoded``: frames the decoder produced, the clip's and those before it since the
    keyframe (OpenCV's reader counts only the frames after its seek: its seek decodes
    more, unseen). ``forward``: reads that could not seek and decoded from the start."""
    clips: int = 0
    decoded: int = 0
    forward: int = 0
    open_s: float = 0.0
    seek_s: float = 0.0
    decode_s: float = 0.0
    convert_s: float = 0.0

    def add(self, other: "DecodeStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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


def clip_indices(start: int, count: int, stride: int, total: int) -> List[int]:
    """Frames start, start+stride, ... of a `total`-frame video, taken modulo its length (a
    short video loops)."""
    return [(start + k * stride) % total for k in range(count)]


def read_frames(path: str, start: int, count: int, stride: int, total: int, reader: str = "auto",
                stats: Optional[DecodeStats] = None, region: Optional[Region] = None) -> np.ndarray:
    """(count, H, W, 3) RGB uint8 frames start, start+stride, ... (clip_indices). Decodes only
    the span it needs. `reader`: "auto" (PyAV, OpenCV where PyAV cannot open the file),
    "pyav" or "opencv"; `stats` (optional) adds what the read cost. `region` (optional) is
    called once with the frames' (height, width) and returns the box (top, left, height,
    width) of each frame to return, or None for whole frames: only that box is converted to
    RGB (a dataset's crop of a video that needs no resizing)."""
    return read_frames_at(path, clip_indices(start, count, stride, total), reader, stats, region)


def read_frames_at(path: str, indices: Sequence[int], reader: str = "auto", stats: Optional[DecodeStats] = None,
                   region: Optional[Region] = None) -> np.ndarray:
    """(len(indices), H, W, 3) RGB uint8: the frames at `indices` (any order, repeats
    allowed: a clip resampled to another frame rate), read as read_frames reads them."""
    if reader not in READERS:
        raise ValueError(f"expected reader to be one of {READERS}, got {reader!r}")
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"expected frame indices >= 0, got {indices[:8]}")
    st = DecodeStats(clips=1)
    decoded: Optional[Dict[int, np.ndarray]] = None
    if reader != "opencv":
        try:
            decoded = _read_pyav(path, indices, st, _Boxer(region))
        except _CannotOpen as err:
            if reader == "pyav":
                raise VideoDecodeError(f"cannot open {path} with PyAV ({err})") from None
    if decoded is None:
        decoded = _read_opencv(path, indices, st, _Boxer(region))
    if stats is not None:
        stats.add(st)
    if not decoded:
        raise VideoDecodeError(f"no frame of {path} could be decoded from frame {min(indices)}")
    return np.stack([_nearest(decoded, i) for i in indices])


def _nearest(decoded: Dict[int, np.ndarray], i: int) -> np.ndarray:
    """Frame i, or where it did not decode: the last decoded frame before it (a timestamp
    gap), or, past the decoded end (a container that over-reports its length), the frames
    that did decode, looped."""
    if i in decoded:
        return decoded[i]
    have = sorted(decoded)
    if i < have[-1]:
        earlier = [k for k in have if k < i]
        return decoded[earlier[-1] if earlier else have[0]]
    return decoded[have[i % len(have)]]


class _CannotOpen(Exception):
    """PyAV cannot open the file or finds no video stream in it: try OpenCV."""


class _Boxer:
    """A read's region, asked once, at the first frame kept."""

    def __init__(self, region: Optional[Region]):
        self.region, self.asked, self.box = region, region is None, None

    def __call__(self, height: int, width: int) -> Optional[Box]:
        if not self.asked:
            self.asked, self.box = True, self.region(height, width)
        return self.box


def _rgb(frame: "av.VideoFrame", box: Optional[Box] = None) -> np.ndarray:
    """(H, W, 3) RGB uint8 of a decoded frame, or of its `box`. Limited-range 4:2:0 (nearly
    every H.264/MPEG-4 file) goes through OpenCV's I420 conversion of the planes, cut to the
    box (widened to even edges, as 4:2:0 chroma needs) before converting; other formats
    through libswscale, then cut."""
    h, w = frame.height, frame.width
    if frame.format.name != "yuv420p" or frame.color_range == 2 or h % 2 or w % 2:
        # threads=1: libswscale's default (0) runs a slice-thread pool that PyAV keeps with its
        # cached context; a DataLoader worker forked after the parent converted a frame
        # inherits the pool without its threads and waits for them forever (seen here).
        rgb = frame.to_ndarray(format="rgb24", threads=1)
        return rgb if box is None else rgb[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    top, left, bh, bw = box if box is not None else (0, 0, h, w)
    t0, l0 = top - top % 2, left - left % 2
    t1, l1 = min(h, top + bh + (top + bh) % 2), min(w, left + bw + (left + bw) % 2)
    y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes)
    i420 = np.concatenate([y[t0:t1, l0:l1].ravel(), u[t0 // 2:t1 // 2, l0 // 2:l1 // 2].ravel(),
                           v[t0 // 2:t1 // 2, l0 // 2:l1 // 2].ravel()]).reshape(-1, l1 - l0)
    rgb = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    return rgb[top - t0:top - t0 + bh, left - l0:left - l0 + bw]


def _open_pyav(path: str):
    """(container, its first video stream) with this process's decoder thread count;
    _CannotOpen where PyAV cannot open the file or it holds no video."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise _CannotOpen(str(err).strip()) from None
    if not container.streams.video:
        container.close()
        raise _CannotOpen("no video stream")
    stream = container.streams.video[0]
    if _decoder_threads:
        stream.codec_context.thread_count = _decoder_threads
    return container, stream


def _read_pyav(path: str, indices: List[int], st: DecodeStats, boxer: _Boxer) -> Dict[int, np.ndarray]:
    first, last, wanted = min(indices), max(indices), set(indices)
    clock = time.perf_counter()
    container, stream = _open_pyav(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        time_base, origin = stream.time_base, stream.start_time or 0
        placed = bool(rate and time_base)
        now = time.perf_counter()
        st.open_s += now - clock
        clock = now
        if placed and first > 0:
            try:  # the keyframe at or before the first frame's timestamp
                container.seek(origin + math.floor(Fraction(first) / (rate * time_base)), backward=True,
                               any_frame=False, stream=stream)
            except av.FFmpegError:  # not seekable (e.g. a raw elementary stream): read forward
                placed = False
        now = time.perf_counter()
        st.seek_s += now - clock
        decoded = None
        if placed:
            decoded = _decode_span(container, stream, first, last, wanted, st, boxer,
                                   lambda pts: round((pts - origin) * time_base * rate))
    if decoded is None:  # the timestamps could not place the frames (_decode_span), or no seek
        st.forward += 1
        container, stream = _open_pyav(path)
        with container:
            decoded = _decode_span(container, stream, first, last, wanted, st, boxer, None)
    return decoded


def _decode_span(container, stream, first: int, last: int, wanted: set, st: DecodeStats, boxer: _Boxer,
                 index_of) -> Optional[Dict[int, np.ndarray]]:
    """Frames `wanted` of [first, last] by decoding from where the container stands: indexed
    by `index_of(pts)`, or by counting from 0 when it is None. None when the timestamps do
    not place the frames one after another (a frame without one, the first one past
    `first`, a gap or a step back: variable frame rates, or a seek into an open GOP whose
    frames come out damaged), or when nothing decodes after the seek: the caller then reads
    forward, counting. A decoding error
    ends the span with what decoded (a truncated or corrupt file)."""
    decoded: Dict[int, np.ndarray] = {}
    count, previous, clock = 0, None, time.perf_counter()
    try:
        for frame in container.decode(stream):
            st.decoded += 1
            if index_of is None:
                i = count
            elif frame.pts is None:
                return None
            else:
                i = index_of(frame.pts)
                if (i > first if previous is None else i != previous + 1):
                    return None
                previous = i
            count += 1
            if i in wanted and i not in decoded:
                now = time.perf_counter()
                st.decode_s += now - clock
                decoded[i] = _rgb(frame, boxer(frame.height, frame.width))
                clock = time.perf_counter()
                st.convert_s += clock - now
            if i >= last:
                break
    except av.FFmpegError:
        pass
    st.decode_s += time.perf_counter() - clock
    if index_of is not None and not decoded:  # a seek past the last frame it could decode
        return None
    return decoded


def _read_opencv(path: str, indices: List[int], st: DecodeStats, boxer: _Boxer) -> Dict[int, np.ndarray]:
    first, last, wanted = min(indices), max(indices), set(indices)
    clock = time.perf_counter()
    cap = open_video(path)
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"cannot open {path}")
        now = time.perf_counter()
        st.open_s += now - clock
        if first > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        clock = time.perf_counter()
        st.seek_s += clock - now
        decoded: Dict[int, np.ndarray] = {}
        for idx in range(first, last + 1):
            if not cap.grab():
                break
            st.decoded += 1
            if idx in wanted:
                now = time.perf_counter()
                st.decode_s += now - clock
                ok, frame = cap.retrieve()
                if ok:
                    box = boxer(frame.shape[0], frame.shape[1])
                    if box is not None:
                        frame = frame[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
                    decoded[idx] = bgr_to_rgb(frame)
                clock = time.perf_counter()
                st.convert_s += clock - now
        st.decode_s += time.perf_counter() - clock
    finally:
        cap.release()
    return decoded


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """RGB of a frame as OpenCV decodes it (BGR, BGRA or gray)."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
