"""``r2p1d prepare SRC DST``: downsample a video folder once, before training.

On full-size videos the loader, not the network, sets the training speed: decoding a
16-frame clip of a 720p video costs tens of milliseconds per frame-second of work that a
112x112 crop then throws away (measured figures: docs/data.md).
Preparing mirrors every video under SRC (the ``split/class/video`` layout, or any depth)
into DST with

- the short side resized to ``short_side`` (aspect kept, both sides even, as 4:2:0 video
  needs), shrinking with area averaging and enlarging bilinearly;
- with ``fps``, a lower frame rate (output frame k is source frame floor(k * source fps /
  fps); a rate at or above the source's keeps every frame: no frame is ever invented);
- MPEG-4 Part 2 (OpenCV's ``mp4v``) in ``.mp4``: OpenCV's FFmpeg writer puts a keyframe
  every 12 frames (its fixed GOP; it ignores VIDEOWRITER_PROP_KEY_INTERVAL for this codec),
  so reading a clip seeks to a keyframe and decodes at most 11 frames it does not keep.
  Intra-only MJPEG would make seeks free, but at 128 px its files are about 6x larger and
  decode more slowly per clip than mp4v's (docs/data_preparation.md has the measurements);
  pip's OpenCV has no H.264 encoder.

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
from typing import Any, Dict, List, Optional, Tuple

import cv2
from tqdm import tqdm

from . import manifest
from .._io import FolderBusyError, exclusive as _exclusive, remove_stale_temporaries
from .video import VIDEO_EXTENSIONS, VideoDecodeError, is_hidden, warn_line

CODEC, CONTAINER = "mp4v", ".mp4"
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
    """Video files under `src`, relative, sorted; hidden files and folders left out."""
    found = []
    exts = tuple(e.lower() for e in VIDEO_EXTENSIONS)
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [os.path.relpath(os.path.join(folder, f), src) for f in sorted(files)
                  if f.lower().endswith(exts) and not is_hidden(f)]
    return found


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


def convert(source: str, output: str, short_side: int, fps: Optional[float]) -> Tuple[Dict[str, Any], str]:
    """Writes the prepared copy of `source` to `output` (atomically); returns its manifest
    row (without the relative paths) and a note ('' or why the input looks truncated).
    VideoDecodeError when no frame of `source` decodes."""
    cap = cv2.VideoCapture(source)
    tmp = temporary_name(output)
    writer = None
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"cannot open {source}")
        source_fps = cap.get(cv2.CAP_PROP_FPS)
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        in_fps = source_fps if math.isfinite(source_fps) and source_fps > 0 else ASSUMED_FPS
        out_fps = fps if fps is not None and fps < in_fps else in_fps
        step = in_fps / out_fps  # >= 1: output frame k is source frame floor(k * step)
        decoded = written = 0
        size = None
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            index, decoded = decoded, decoded + 1
            if index != math.floor(written * step + 1e-6):
                continue
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            elif frame.shape[2] == 4:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
            if writer is None:
                size = output_size(frame.shape[0], frame.shape[1], short_side)
                writer = cv2.VideoWriter(tmp, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*CODEC), out_fps,
                                         (size[1], size[0]))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {CODEC} video to {tmp}")
            shrink = size[0] * size[1] < frame.shape[0] * frame.shape[1]
            writer.write(cv2.resize(frame, (size[1], size[0]),
                                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
            written += 1
        if writer is None:
            raise VideoDecodeError(f"no frame of {source} could be decoded")
        writer.release()
        writer = None
        os.replace(tmp, output)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
    note = ""
    if reported > 1 and decoded < TRUNCATED * reported:
        note = f"only {decoded} of the {reported} frames its container reports could be decoded (truncated?)"
    row = {"frames": written, "fps": out_fps, "width": size[1], "height": size[0],
           "bytes": os.path.getsize(output), "source_frames": decoded,
           "source_fps": source_fps if in_fps == source_fps else None}
    return row, note


def describe(output: str) -> Dict[str, Any]:
    """The manifest row fields of an existing output (a re-run without its row)."""
    cap = cv2.VideoCapture(output)
    try:
        return {"frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), "fps": cap.get(cv2.CAP_PROP_FPS),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "bytes": os.path.getsize(output)}
    finally:
        cap.release()


def _job(src: str, dst: str, rel: str, short_side: int, fps: Optional[float]):
    """One video (in a worker process): ('ok', row, note) or ('failed', rel, reason)."""
    out_rel = output_name(rel)
    output = os.path.join(dst, *out_rel.split("/"))
    os.makedirs(os.path.dirname(output), exist_ok=True)
    try:
        row, note = convert(os.path.join(src, rel), output, short_side, fps)
    except (VideoDecodeError, cv2.error) as err:
        return "failed", rel, str(err).strip()
    return "ok", {"output": out_rel, "source": rel.replace(os.sep, "/"), **row}, note


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _check_arguments(src: str, dst: str, short_side: int, fps: Optional[float], workers: int) -> None:
    if not os.path.isdir(src):
        raise FileNotFoundError(f"expected SRC to be a folder of videos, got {src!r} (not a folder)")
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 2 or short_side % 2:
        raise ValueError(f"expected an even short side >= 2 (4:2:0 video needs even sizes), got {short_side!r}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"expected fps to be a positive number or None, got {fps!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"expected workers to be an int >= 0, got {workers!r}")
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


def _previous_rows(dst: str, settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    path = manifest.path_in(dst)
    if not os.path.exists(path):
        return {}
    doc = manifest.read(path)
    if doc.get("settings") != settings:
        raise ValueError(f"{dst} was prepared with {doc.get('settings')}, not {settings}; prepare into "
                         "another folder, or delete this one to start over")
    return manifest.rows_by_output(doc)


def prepare(src: str, dst: str, short_side: int = 128, fps: Optional[float] = None,
            workers: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Prepares every video under `src` into `dst` (see the module's text). `workers`
    processes (default: one per available core; 0: in this process). Returns a summary:
    ``prepared``, ``skipped`` (already done), ``failed`` (list of (source, reason)),
    ``truncated`` (list of (source, note): written from the frames that decoded),
    ``manifest`` (its path). A KeyboardInterrupt leaves every finished video and the
    manifest of those: run again to resume. The workers are spawned processes: a script
    that calls this with workers > 0 needs the ``if __name__ == "__main__":`` guard."""
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    _check_arguments(src, dst, short_side, fps, workers)
    jobs = find_videos(src)
    if not jobs:
        raise ValueError(f"no video files under {src} (extensions {', '.join(VIDEO_EXTENSIONS)})")
    _check_names(jobs)
    settings = {"short_side": short_side, "fps": None if fps is None else float(fps), "codec": CODEC}
    os.makedirs(dst, exist_ok=True)
    with exclusive(dst):
        return _prepare(src, dst, jobs, settings, short_side, fps, workers, progress)


def _prepare(src: str, dst: str, jobs: List[str], settings: Dict[str, Any], short_side: int,
             fps: Optional[float], workers: int, progress: bool) -> Dict[str, Any]:
    """prepare() once the arguments are checked and the folder is locked."""
    previous = _previous_rows(dst, settings)
    remove_temporaries(dst)

    rows: Dict[str, Dict[str, Any]] = {}
    todo = []
    for rel in jobs:
        out_rel = output_name(rel)
        output = os.path.join(dst, *out_rel.split("/"))
        if os.path.exists(output) and os.path.getmtime(output) >= os.path.getmtime(os.path.join(src, rel)):
            row = previous.get(out_rel)
            rows[out_rel] = row if manifest.row_matches(row, output) else \
                {"output": out_rel, "source": rel.replace(os.sep, "/"), **describe(output)}
        else:
            todo.append(rel)
    summary: Dict[str, Any] = {"prepared": 0, "skipped": len(rows), "failed": [], "truncated": [],
                               "manifest": manifest.path_in(dst)}

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
            futures = [pool.submit(_job, src, dst, rel, short_side, fps) for rel in todo]
            results = (f.result() for f in cf.as_completed(futures))
        else:
            results = (_job(src, dst, rel, short_side, fps) for rel in todo)
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
