"""``r2p1d prepare SRC DST``: downsample a video folder once, before training.

On full-size videos the loader, not the network, sets the training speed: decoding a
16-frame clip of a 720p video costs tens of milliseconds per frame-second of work that a
112x112 crop then throws away (measured figures: docs/data.md).
Preparing mirrors every video under SRC (the ``split/class/video`` layout, or any depth;
symbolic links followed), or only those annotation files list (``only``: listed_videos),
into DST with

- the short side resized to ``short_side`` (aspect kept, both sides even, as 4:2:0 video
  needs), shrinking with area averaging and enlarging bilinearly (libswscale);
- with ``fps``, a lower frame rate (output frame k is source frame floor(k * source fps /
  fps); a rate at or above the source's keeps every frame: no frame is ever invented);
- H.264 built for seeking, in ``.mp4``, written by libx264 through PyAV: a keyframe every
  ``keyframe_interval`` frames exactly (default 16, the default clip length; no scene-cut
  keyframes), no B-frames, ``tune=fastdecode`` (CAVLC, no deblocking), yuv420p, constant
  quality (``crf``), no audio. A clip read seeks to the keyframe at or before its first
  frame and decodes at most ``clip_len + keyframe_interval - 1`` frames. Where PyAV's FFmpeg
  has no libx264, FFmpeg's own MPEG-4 Part 2 encoder writes the same keyframe pattern, with
  a warning (larger files at the same quality). The codec and keyframe interval of every
  file are in the manifest: re-preparing a folder written with another codec or interval
  (such as the earlier OpenCV ``mp4v`` files, a keyframe every 12 frames) rewrites those
  files and keeps the rest. docs/data_preparation.md has the measurements behind the
  choice.

Nothing is lost or left half-done: each video is written under a hidden temporary name
(``.<name>.part-<pid>.mp4``, which the dataset ignores) and renamed when whole; a re-run skips
every output that exists and is newer than its source, and removes the temporaries of a
killed run. Unreadable inputs are skipped with one warning each, counted and listed in the
manifest (``DST/manifest.json``, see :mod:`r2p1d_ext.data.manifest`), which also records the
settings: preparing into a folder made with other settings is an error, and so is a second
run into a folder that a live run is preparing into (``DST/.prepare.lock``).
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Tuple

import av
import cv2
from tqdm import tqdm

from . import manifest
from .annotations import SUBSETS, AnnotationError, FileIndex, read_annotations
from .._io import FolderBusyError, exclusive as _exclusive, remove_stale_temporaries
from .video import VIDEO_EXTENSIONS, VideoDecodeError, bgr_to_rgb, is_hidden, open_video, warn_line

CONTAINER = ".mp4"
KEYFRAME_INTERVAL = 16  # the default clip length: a clip decodes at most 31 frames
CRF = 20  # libx264's constant quality (lower: better and larger)
PART = ".part-"
ASSUMED_FPS = 25.0  # for a source whose container gives no frame rate
TRUNCATED = 0.9  # fewer decoded frames than this share of the container's count: warn


def output_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(height, width) with the short side `short_side` and the long side scaled to the
    nearest even size (at least 2)."""
    scale = short_side / min(height, width)
    even = lambda x: max(2, 2 * round(x / 2))  # noqa: E731
    if height <= width:
        return short_side, even(width * scale)
    return even(height * scale), short_side


def output_name(rel_source: str) -> str:
    """The output path (relative, '/'-separated) of a source path relative to SRC."""
    return os.path.splitext(rel_source)[0].replace(os.sep, "/") + CONTAINER


def find_videos(src: str) -> List[str]:
    """Video files under `src`, relative, sorted; hidden files and folders left out;
    symbolic links followed (a split made of links to the videos), each folder once."""
    found = []
    exts = tuple(e.lower() for e in VIDEO_EXTENSIONS)
    seen = set()
    for folder, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already walked (a cycle, or two links to one folder)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [os.path.relpath(os.path.join(folder, f), src) for f in sorted(files)
                  if f.lower().endswith(exts) and not is_hidden(f)]
    return found


def listed_videos(annotations: str, src: str, fold: int = 1, fmt: str = "auto") -> List[str]:
    """The videos under `src` that annotation files list for split `fold`, every subset
    (r2p1d_ext/data/annotations.py), relative to `src`; those listed but absent are reported
    in one warning."""
    found, missing = set(), []
    index = FileIndex(src)  # one walk of the source folder for every subset
    for subset in SUBSETS:
        try:
            listing = read_annotations(annotations, src, subset, fold, fmt, index=index)
        except (AnnotationError, FileNotFoundError):
            if subset == "train":  # every format has a training list; the others may lack one
                raise
            continue
        found.update(os.path.relpath(path, src) for path, _ in listing.videos)
        missing += [m for m in listing.missing if m not in missing]
    if missing:
        warn_line(f"{len(missing)} videos listed in {annotations} are not under {src}: not prepared "
                  f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", "r2p1d_ext.prepare")
    if not found:
        raise ValueError(f"none of the videos {annotations} lists (split {fold}) is under {src}")
    return sorted(found)


def temporary_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, "." + os.path.splitext(name)[0] + PART + str(os.getpid()) + CONTAINER)


def remove_temporaries(dst: str) -> List[str]:
    """Deletes what a killed run left half-written under `dst`: outputs and the manifest's
    temporary file. Only under the folder's lock (`exclusive`): another live run's
    temporaries are its work in progress."""
    stale = remove_stale_temporaries(dst, (".json",))
    for folder, _, files in os.walk(dst):
        for f in files:
            if f.startswith(".") and PART in f and f.endswith(CONTAINER):
                stale.append(os.path.join(folder, f))
                os.unlink(stale[-1])
    return stale


LOCK = ".prepare.lock"


def exclusive(dst: str):
    """Holds `dst`'s lock (``DST/.prepare.lock``, an flock shared with the worker pool) while
    preparing into it: a second run into the same folder would remove the first's
    temporaries and overwrite its manifest with its own rows, so it is a clear error
    instead (_io.exclusive: no stale lock outlives a killed run)."""
    def busy(holder: str) -> FolderBusyError:
        return FolderBusyError(f"another r2p1d prepare (process {holder}) is writing into {dst}; wait for it to "
                               "finish (a re-run then skips what it prepared), or prepare into another folder")
    return _exclusive(os.path.join(dst, LOCK), busy)


def encoder() -> str:
    """The encoder prepare writes with: libx264 (H.264), or FFmpeg's MPEG-4 Part 2 encoder
    where PyAV's FFmpeg lacks libx264."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def codec_of(encoder_name: str) -> str:
    """The codec name the manifest records (FFmpeg's decoder name) for an encoder."""
    return {"libx264": "h264"}.get(encoder_name, encoder_name)


class _Writer:
    """A prepared video being written: PyAV stream with the keyframe pattern, written to
    `path` (the caller renames it when whole). Frames are resized and converted to yuv420p
    by libswscale in one step, area averaging when shrinking (0.4 ms a 720p frame here,
    against 3.5 ms for OpenCV's RGB conversion and INTER_AREA resize)."""

    def __init__(self, path: str, height: int, width: int, fps: float, keyframe_interval: int, crf: int,
                 encoder_name: str):
        self.container = av.open(path, "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001000)
        self.stream = self.container.add_stream(encoder_name, rate=rate)
        self.time_base = 1 / rate  # frame k at time k / rate
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.thread_count = 1  # one process per core already
        k = str(keyframe_interval)
        # g = keyint_min and no scene-cut detection: keyframes exactly every k frames, so a
        # clip's seek is bounded; bf 0: frames decode in order (no reordering delay).
        options = {"g": k, "keyint_min": k, "sc_threshold": "0", "bf": "0"}
        if encoder_name == "libx264":
            options.update(preset="medium", tune="fastdecode", crf=str(crf))
        else:  # MPEG-4 Part 2: fixed quantiser of about the same quality
            self.stream.codec_context.flags |= av.codec.context.Flags.qscale
            self.stream.codec_context.global_quality = 3 * 118  # FF_QP2LAMBDA * q
        self.stream.options = options
        self.frames = 0

    def write(self, source: "av.VideoFrame") -> None:
        shrink = self.stream.width * self.stream.height < source.width * source.height
        frame = source.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p",
                                interpolation="AREA" if shrink else "BILINEAR", threads=1)
        frame.pts = self.frames
        # A decoded frame keeps its picture type, and libx264 makes every I frame it is given
        # a keyframe: the source's keyframes would be added to ours.
        frame.pict_type = av.video.frame.PictureType.NONE
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self, finish: bool) -> None:
        try:
            if finish:
                self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


def source_frames(source: str):
    """(frames: an iterator of the decoded av.VideoFrames in order, fps or None, frames the
    container reports or 0). PyAV, or OpenCV where PyAV cannot open the file. A decoding
    error ends the frames (a truncated file keeps what decodes)."""
    try:
        container = av.open(source)
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(f"{source} holds no video stream")
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return _opencv_frames(source)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    rate = stream.average_rate or stream.guessed_rate

    def frames():
        with container:
            try:
                yield from container.decode(stream)
            except av.FFmpegError:
                return
    return frames(), float(rate) if rate else None, stream.frames


def _opencv_frames(source: str):
    cap = open_video(source)
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(f"cannot open {source}")
    fps = cap.get(cv2.CAP_PROP_FPS)

    def frames():
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield av.VideoFrame.from_ndarray(bgr_to_rgb(frame), format="rgb24")
        finally:
            cap.release()
    return frames(), fps if math.isfinite(fps) and fps > 0 else None, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))


def convert(source: str, output: str, short_side: int, fps: Optional[float],
            keyframe_interval: int = KEYFRAME_INTERVAL, crf: int = CRF,
            encoder_name: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """Writes the prepared copy of `source` to `output` (atomically); returns its manifest
    row (without the relative paths) and a note ('' or why the input looks truncated).
    VideoDecodeError when no frame of `source` decodes."""
    encoder_name = encoder_name or encoder()
    frames, source_fps, reported = source_frames(source)
    tmp = temporary_name(output)
    in_fps = source_fps or ASSUMED_FPS
    out_fps = fps if fps is not None and fps < in_fps else in_fps
    step = in_fps / out_fps  # >= 1: output frame k is source frame floor(k * step)
    writer: Optional[_Writer] = None
    decoded = 0
    size = None
    try:
        for frame in frames:
            index, decoded = decoded, decoded + 1
            if index != math.floor(writer_frames(writer) * step + 1e-6):
                continue
            if writer is None:
                size = output_size(frame.height, frame.width, short_side)
                writer = _Writer(tmp, size[0], size[1], out_fps, keyframe_interval, crf, encoder_name)
            writer.write(frame)
        if writer is None:
            raise VideoDecodeError(f"no frame of {source} could be decoded")
        written = writer.frames
        writer.close(finish=True)
        writer = None
        os.replace(tmp, output)
    finally:
        frames.close()
        if writer is not None:
            writer.close(finish=False)
        if os.path.exists(tmp):
            os.unlink(tmp)
    note = ""
    if reported > 1 and decoded < TRUNCATED * reported:
        note = f"only {decoded} of the {reported} frames its container reports could be decoded (truncated?)"
    row = {"frames": written, "fps": out_fps, "width": size[1], "height": size[0],
           "bytes": os.path.getsize(output), "codec": codec_of(encoder_name), "keyframe_interval": keyframe_interval,
           "crf": crf if encoder_name == "libx264" else None, "source_frames": decoded, "source_fps": source_fps}
    return row, note


def writer_frames(writer: Optional[_Writer]) -> int:
    return 0 if writer is None else writer.frames


def describe(output: str) -> Dict[str, Any]:
    """The manifest row fields of an existing output (a re-run without its row): frames,
    rate and size from the container, the codec, and the keyframe interval from the
    packets' flags (no decoding): the longest run of frames from one keyframe to the next,
    or None when the file has one keyframe (shorter than any interval it was written with)."""
    with av.open(output) as container:
        stream = container.streams.video[0]
        keys, count = [], 0
        for packet in container.demux(stream):
            if packet.size:
                if packet.is_keyframe:
                    keys.append(count)
                count += 1
        rate = stream.average_rate or stream.guessed_rate
        gaps = [b - a for a, b in zip(keys, keys[1:] + [count])]
        return {"frames": count, "fps": float(rate) if rate else 0.0, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "bytes": os.path.getsize(output),
                "codec": stream.codec_context.name, "keyframe_interval": max(gaps) if len(keys) > 1 else None}


def _job(src: str, dst: str, rel: str, short_side: int, fps: Optional[float], keyframe_interval: int, crf: int,
         encoder_name: str):
    """One video (in a worker process): ('ok', row, note) or ('failed', rel, reason)."""
    out_rel = output_name(rel)
    output = os.path.join(dst, *out_rel.split("/"))
    os.makedirs(os.path.dirname(output), exist_ok=True)
    try:
        row, note = convert(os.path.join(src, rel), output, short_side, fps, keyframe_interval, crf, encoder_name)
    except (VideoDecodeError, cv2.error, av.FFmpegError) as err:
        return "failed", rel, str(err).strip()
    return "ok", {"output": out_rel, "source": rel.replace(os.sep, "/"), **row}, note


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _check_arguments(src: str, dst: str, short_side: int, fps: Optional[float], workers: int,
                     keyframe_interval: int, crf: int) -> None:
    if not os.path.isdir(src):
        raise FileNotFoundError(f"expected SRC to be a folder of videos, got {src!r} (not a folder)")
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 2 or short_side % 2:
        raise ValueError(f"expected an even short side >= 2 (4:2:0 video needs even sizes), got {short_side!r}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"expected fps to be a positive number or None, got {fps!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"expected workers to be an int >= 0, got {workers!r}")
    if isinstance(keyframe_interval, bool) or not isinstance(keyframe_interval, int) or keyframe_interval < 1:
        raise ValueError(f"expected keyframe_interval to be an int >= 1, got {keyframe_interval!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"expected crf to be an int from 0 to 51 (libx264's scale), got {crf!r}")
    s, d = os.path.realpath(src), os.path.realpath(dst)
    if d == s or d.startswith(s + os.sep) or s.startswith(d + os.sep):
        raise ValueError(f"expected SRC and DST to be separate folders, neither inside the other; got {src!r} and {dst!r}")


def _check_names(jobs: List[str]) -> None:
    by_output: Dict[str, List[str]] = {}
    for rel in jobs:
        by_output.setdefault(output_name(rel), []).append(rel)
    clashes = {o: r for o, r in by_output.items() if len(r) > 1}
    if clashes:
        out, rels = next(iter(clashes.items()))
        raise ValueError(f"{len(clashes)} outputs would have several sources, e.g. {out} from {rels}; "
                         "rename the sources so that no two differ only in their extension")


CONTENT = ("short_side", "fps")  # settings that change what a prepared file shows


def _previous_rows(dst: str, settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The rows of `dst`'s manifest. Another short side or frame rate is an error (every file
    would change); another codec, keyframe interval or quality is not: the files written
    otherwise are rewritten (is_current)."""
    path = manifest.path_in(dst)
    if not os.path.exists(path):
        return {}
    doc = manifest.read(path)
    old = doc.get("settings") or {}
    if any(old.get(k) != settings[k] for k in CONTENT):
        mine = {k: settings[k] for k in CONTENT}
        raise ValueError(f"{dst} was prepared with {({k: old.get(k) for k in CONTENT})}, not {mine}; prepare into "
                         "another folder, or delete this one to start over")
    return manifest.rows_by_output(doc)


def is_current(row: Dict[str, Any], settings: Dict[str, Any]) -> bool:
    """The file a row describes is written as `settings` ask: codec, keyframe interval (a
    file with one keyframe: no longer than the interval) and, where the row knows it,
    quality."""
    interval = row.get("keyframe_interval")
    if interval is None:
        interval = settings["keyframe_interval"] if row.get("frames", 0) <= settings["keyframe_interval"] else 0
    return (row.get("codec") == settings["codec"] and interval == settings["keyframe_interval"]
            and row.get("crf", settings["crf"]) == settings["crf"])


def prepare(src: str, dst: str, short_side: int = 128, fps: Optional[float] = None,
            workers: Optional[int] = None, progress: bool = True, keyframe_interval: int = KEYFRAME_INTERVAL,
            crf: int = CRF, only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Prepares every video under `src` into `dst` (see the module's text). `workers`
    processes (default: one per available core; 0: in this process). Returns a summary:
    ``prepared``, ``skipped`` (already done), ``rewritten`` (of the prepared: outputs that
    existed in another codec or keyframe interval), ``failed`` (list of (source, reason)),
    ``truncated`` (list of (source, note): written from the frames that decoded),
    ``encoder``, ``manifest`` (its path). A KeyboardInterrupt leaves every finished video
    and the manifest of those: run again to resume. The workers are spawned processes: a
    script that calls this with workers > 0 needs the ``if __name__ == "__main__":`` guard."""
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    _check_arguments(src, dst, short_side, fps, workers, keyframe_interval, crf)
    jobs = find_videos(src) if only is None else sorted({os.path.normpath(r) for r in only})
    if not jobs:
        raise ValueError(f"no video files under {src} (extensions {', '.join(VIDEO_EXTENSIONS)})")
    _check_names(jobs)
    name = encoder()
    if name != "libx264":
        warn_line(f"PyAV's FFmpeg has no libx264 encoder: writing MPEG-4 Part 2 ({name}) instead, larger files "
                  "at the same quality (pip install av: its wheels include libx264)", "r2p1d_ext.prepare")
    settings = {"short_side": short_side, "fps": None if fps is None else float(fps), "codec": codec_of(name),
                "keyframe_interval": keyframe_interval, "crf": crf if name == "libx264" else None}
    os.makedirs(dst, exist_ok=True)
    with exclusive(dst):
        return _prepare(src, dst, jobs, settings, name, workers, progress)


def _prepare(src: str, dst: str, jobs: List[str], settings: Dict[str, Any], encoder_name: str, workers: int,
             progress: bool) -> Dict[str, Any]:
    """prepare() once the arguments are checked and the folder is locked."""
    previous = _previous_rows(dst, settings)
    remove_temporaries(dst)

    rows: Dict[str, Dict[str, Any]] = {}
    todo, rewrite = [], 0
    for rel in jobs:
        out_rel = output_name(rel)
        output = os.path.join(dst, *out_rel.split("/"))
        if os.path.exists(output) and os.path.getmtime(output) >= os.path.getmtime(os.path.join(src, rel)):
            row = previous.get(out_rel)
            if not manifest.row_matches(row, output):
                row = {"output": out_rel, "source": rel.replace(os.sep, "/"), **describe(output)}
            if is_current(row, settings):
                rows[out_rel] = row
                continue
            rewrite += 1
        todo.append(rel)
    arguments = (settings["short_side"], settings["fps"], settings["keyframe_interval"], settings["crf"] or CRF,
                 encoder_name)
    summary: Dict[str, Any] = {"prepared": 0, "skipped": len(rows), "rewritten": rewrite, "failed": [],
                               "truncated": [], "encoder": encoder_name, "manifest": manifest.path_in(dst)}

    def save(complete: bool) -> None:
        manifest.write(summary["manifest"], settings, list(rows.values()),
                       [{"source": s, "reason": r} for s, r in summary["failed"]], complete,
                       os.path.abspath(src))

    def record(result) -> None:
        status, first, note = result
        if status == "failed":
            summary["failed"].append((first, note))
            warn_line(f"skipping video {os.path.join(src, first)}: {note}", "r2p1d_ext.prepare")
            return
        rows[first["output"]] = first
        summary["prepared"] += 1
        if note:
            summary["truncated"].append((first["source"], note))
            warn_line(f"{os.path.join(src, first['source'])}: {note}; kept those frames", "r2p1d_ext.prepare")

    save(complete=False)  # the settings are on record before the first output exists
    pool = bar = None
    try:
        if workers and todo:
            # spawn, not fork: a forked child inherits OpenCV's thread pool mid-state and
            # hangs in its first OpenCV call (seen here: cv2.setNumThreads in the child, after
            # the parent had resized frames). So a script calling prepare() with workers needs
            # the usual `if __name__ == "__main__":` guard.
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker)
            futures = [pool.submit(_job, src, dst, rel, *arguments) for rel in todo]
            results = (f.result() for f in cf.as_completed(futures))
        else:
            results = (_job(src, dst, rel, *arguments) for rel in todo)
        bar = tqdm(total=len(jobs), initial=len(rows), desc=f"prepare -> {dst}", unit="video",
                   disable=not progress)
        for result in results:
            record(result)
            bar.update()
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        save(complete=summary["prepared"] + len(summary["failed"]) == len(todo))
    return summary
