#!/usr/bin/env python3
"""Data-loading benchmark: clips/s per loader worker on real H.264, raw and prepared.

Sources: --videos 1280x720 H.264 videos of --seconds at 25 fps, written here by PyAV's
libx264 with its defaults (a keyframe every 250 frames, B-frames: as web video comes),
showing a textured background that pans, moving shapes and sensor-like noise (made once
under --data, git-ignored data/ by default, and reused). Measured, in this process with one
thread (one DataLoader worker's speed) and through a DataLoader with --workers processes:

- raw 720p and the ``r2p1d prepare`` copy (H.264, short side 128, a keyframe every 16
  frames), each the current way (PyAV reader, uint8 items: decode and crop) and the former
  way (OpenCV reader, float32 items normalised in the worker by the former NumPy code; the
  former prepared format, OpenCV's mp4v with a keyframe every 12 frames; the OpenCV reader
  now converts only the crop, so this row is somewhat faster than the former code was):
  clips/s, decoded frames per clip, the
  bytes a worker ships per clip, and ms per clip in each stage (open, seek, decode,
  convert to RGB, and the rest: crop, stacking, normalisation where the worker does it);
- the prepared formats side by side at 228x128: KB per second of video, PSNR against the
  resized frames, clip reads/s;
- ``prepare`` itself: seconds per 1,000 source frames on one core, KB per second of the
  prepared video;
- VideoDataset start-up on 1000 small files with its manifest and without.

Training clips as the trainer takes them: 16 frames, short side 128, random 112x112 crop.
Every pass runs on a warm page cache.

    python bench/bench_data.py                       # ~5 min on 2 cores, the first run longer
    python bench/bench_data.py --videos 2 --many 100 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import sys
import time

import av
import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, commit, cpu_name, pyplot, save, save_figure  # noqa: E402
from r2p1d_ext.data.dataset import VideoDataset  # noqa: E402
from r2p1d_ext.data.prepare import describe, find_videos, output_size, prepare  # noqa: E402
from r2p1d_ext.data.synthetic import DEFAULT_CLASSES, _background, write_video  # noqa: E402
from r2p1d_ext.data.video import DecodeStats, one_thread_per_worker, read_frames  # noqa: E402

CLIP = dict(clip_len=16, short_side=128, crop_size=112)
STAGES = ("open", "seek", "decode", "convert")


def render(rng, frames, h, w, pan=3):
    """RGB frames of a panning texture with three moving discs and +-3 levels of 2x2 noise."""
    bg = _background(rng, h, w + pan * frames).astype(np.uint8)
    for f in range(frames):
        frame = np.ascontiguousarray(bg[:, pan * f:pan * f + w])
        for k in range(3):
            centre = (int(w * (0.2 + 0.25 * k) + 6 * f * (1 - k)), int(h * 0.5 + 0.11 * h * np.sin(f / 10 + k)))
            cv2.circle(frame, centre, int(h * (0.08 + 0.03 * k)), (40 + 80 * k, 200 - 60 * k, 90), -1, cv2.LINE_AA)
        noise = cv2.resize(rng.integers(-3, 4, (h // 2, w // 2), dtype=np.int16), (w, h),
                           interpolation=cv2.INTER_NEAREST)
        yield np.clip(frame.astype(np.int16) + noise[..., None], 0, 255).astype(np.uint8)


def write_h264(path, frames, size, fps=25):
    tmp = path + ".part.mp4"
    with av.open(tmp, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    os.replace(tmp, path)


def make_sources(root, count, size, frames, progress=True):
    """`count` H.264 videos under root/train/<class>/, once (a marker names what was made)."""
    marker = os.path.join(root, f".complete-h264-{count}x{size[0]}x{size[1]}x{frames}")
    if os.path.exists(marker):
        return
    from tqdm import tqdm
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in tqdm(range(count), desc=f"sources -> {root}", unit="video", disable=not progress):
        folder = os.path.join(root, "train", DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)])
        os.makedirs(folder, exist_ok=True)
        write_h264(os.path.join(folder, f"{i:05d}.mp4"), render(rng, frames, *size), size)
    open(marker, "w").close()


def write_former_format(raw, dst, short_side=128):
    """The former prepared format: OpenCV's mp4v (a keyframe every 12 frames), frames
    resized with INTER_AREA, as prepare wrote them before."""
    if os.path.exists(os.path.join(dst, ".complete")):
        return
    for rel in find_videos(raw):
        n = _frame_count(os.path.join(raw, rel))
        frames = read_frames(os.path.join(raw, rel), 0, n, 1, n)
        h, w = output_size(frames.shape[1], frames.shape[2], short_side)
        out = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_video(out, np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1] for f in frames]))
    open(os.path.join(dst, ".complete"), "w").close()


def _frame_count(path):
    with av.open(path) as c:
        return c.streams.video[0].frames


class FloatItems(torch.utils.data.Dataset):
    """The former items: the float32 clip, normalised in the worker with the NumPy code the
    dataset had (three temporaries of the clip's size, then a transposed copy)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        clip, *rest = self.data[i]
        mean = np.asarray(self.data.mean, dtype=np.float32) * 255
        std = np.asarray(self.data.std, dtype=np.float32) * 255
        x = (clip.numpy().astype(np.float32) - mean) / std
        return (torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2))), *rest)


def per_worker(data, reader, floats, clips, repeats):
    """One worker's speed, in this process with one thread: median clips/s over `repeats`
    passes of `clips` random training clips, and the per-clip stage costs (ms), decoded
    frames and item bytes of those passes."""
    ds = VideoDataset(data, "train", seed=0, reader=reader, **CLIP)
    items = FloatItems(ds) if floats else ds
    order = np.random.default_rng(1).integers(0, len(ds), size=clips)
    items[int(order[0])]
    ds.stats = DecodeStats()
    rates, seconds, size = [], 0.0, 0
    for r in range(repeats):
        ds.set_epoch(r)
        start = time.perf_counter()
        for i in order:
            clip = items[int(i)][0]
        took = time.perf_counter() - start
        rates.append(clips / took)
        seconds += took
        size = clip.numel() * clip.element_size()
    st, n = ds.stats, ds.stats.clips
    ms = {k: 1000 * getattr(st, k + "_s") / n for k in STAGES}
    ms["rest"] = 1000 * seconds / n - sum(ms.values())
    return {"clips_per_s": statistics.median(rates), "decoded_per_clip": st.decoded / n,
            "forward_reads": st.forward, "bytes_per_clip": size, "ms": ms}


def through_loader(data, reader, floats, clips, workers, repeats, batch=8):
    """Median clips/s of a DataLoader with `workers` processes (one thread each); the clock
    starts at the first batch and runs over `clips` more clips."""
    ds = VideoDataset(data, "train", seed=0, reader=reader, **CLIP)
    items = FloatItems(ds) if floats else ds
    rates = []
    for r in range(repeats):
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=clips + batch,
                                                 generator=torch.Generator().manual_seed(r))
        loader = torch.utils.data.DataLoader(items, batch_size=batch, sampler=sampler, num_workers=workers,
                                             worker_init_fn=one_thread_per_worker)
        it = iter(loader)
        next(it)
        start, seen = time.perf_counter(), 0
        for b in it:
            seen += len(b[0])
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def timed_prepare(src, dst, workers):
    """Prepares src into dst from scratch; (seconds, source frames, KB per second of
    prepared video)."""
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    summary = prepare(src, dst, workers=workers, progress=False)
    if summary["failed"]:
        raise RuntimeError(f"prepare failed on {summary['failed']}")
    took = time.perf_counter() - start
    import json
    with open(summary["manifest"]) as f:
        rows = json.load(f)["videos"]
    seconds = sum(r["frames"] / r["fps"] for r in rows)
    return took, sum(r["source_frames"] for r in rows), sum(r["bytes"] for r in rows) / 1024 / seconds


def formats(source, out_dir, seconds=2.0):
    """The prepared formats side by side: one source at 228x128, per format the KB per second
    of video, PSNR against the resized frames (as the PyAV reader gives them) and 16-frame
    random clip reads/s (reader, no crop)."""
    from r2p1d_ext.data.prepare import _Writer
    n = _frame_count(source)
    frames = read_frames(source, 0, n, 1, n)
    h, w = output_size(frames.shape[1], frames.shape[2], 128)
    resized = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=w, height=h, format="yuv420p",
                                                                      interpolation="AREA") for f in frames]
    ref = np.stack([f.to_ndarray(format="rgb24") for f in resized]).astype(np.float64)
    os.makedirs(out_dir, exist_ok=True)
    rows = {}
    for name, encoder, interval in (("H.264, keyframe every 16 (prepare)", "libx264", 16),
                                    ("MPEG-4 Part 2, keyframe every 16 (fallback)", "mpeg4", 16)):
        path = os.path.join(out_dir, f"{encoder}.mp4")
        writer = _Writer(path, h, w, 25, interval, 20, encoder)
        for f in resized:
            writer.write(f)
        writer.close(finish=True)
        rows[name] = path
    old = os.path.join(out_dir, "mp4v.mp4")
    write_video(old, np.ascontiguousarray(ref.astype(np.uint8)[..., ::-1]))
    rows["mp4v, keyframe every 12 (former prepare, OpenCV)"] = old
    out = {}
    for name, path in rows.items():
        decoded = read_frames(path, 0, n, 1, n, reader="pyav").astype(np.float64)
        mse = ((decoded - ref) ** 2).mean()
        rng, count, st = np.random.default_rng(0), 0, DecodeStats()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            read_frames(path, int(rng.integers(0, n - 15)), 16, 1, n, reader="pyav", stats=st)
            count += 1
        out[name] = {"kbytes_per_s": os.path.getsize(path) / 1024 / (n / 25),
                     "psnr_db": 10 * np.log10(255 ** 2 / mse), "clip_reads_per_s": count / (time.perf_counter() - start),
                     "decoded_per_clip": st.decoded / st.clips}
    return {"size": f"{w}x{h}", "frames": n, "formats": out}


def startup_seconds(data, manifest, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ds = VideoDataset(data, "train", manifest=manifest, clip_len=8, short_side=32, crop_size=32)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(ds.videos), ds.probed


def make_many(root, count):
    marker = os.path.join(root, f".complete-{count}")
    if os.path.exists(marker):
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, "train", DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)])
        os.makedirs(folder, exist_ok=True)
        write_video(os.path.join(folder, f"{i:05d}.mp4"), rng.integers(0, 255, (16, 48, 64, 3), dtype=np.uint8))
    open(marker, "w").close()


def chart(result, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = result["rows"]
    names = list(rows)
    x = np.arange(len(names))
    ax1.barh(x, [rows[k]["per_worker"]["clips_per_s"] for k in names], color="tab:blue")
    for i, k in enumerate(names):
        ax1.text(rows[k]["per_worker"]["clips_per_s"], i, f" {rows[k]['per_worker']['clips_per_s']:.1f}",
                 va="center", fontsize=7)
    ax1.set_yticks(x, names, fontsize=7)
    ax1.set_xscale("log")
    ax1.set_xlabel("training clips/s, one worker (log)")
    left = np.zeros(len(names))
    for stage, color in zip(STAGES + ("rest",), ("tab:gray", "tab:olive", "tab:blue", "tab:orange", "tab:red")):
        vals = np.array([rows[k]["per_worker"]["ms"][stage] for k in names])
        ax2.barh(x, vals, left=left, color=color, label=stage)
        left += vals
    ax2.set_yticks(x, [""] * len(names))
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per clip by stage (log)")
    ax2.legend(fontsize=7)
    save_figure(fig, f"{result['device']} · torch {result['torch']} · {result['commit']}", path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/bench_data", help="where the generated videos live (reused)")
    p.add_argument("--videos", type=int, default=8, help="720p source videos")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each source video (25 fps)")
    p.add_argument("--many", type=int, default=1000, help="small files for the start-up measurement")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--clips", type=int, default=None,
                   help="clips per timed pass (default 24 raw, 400 prepared: a few seconds each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    raw, prepared = os.path.join(args.data, "raw720p-h264"), os.path.join(args.data, "prepared128-h264")
    former = os.path.join(args.data, "prepared128-mp4v")
    many = os.path.join(args.data, "many")
    frames = round(args.seconds * 25)
    make_sources(raw, args.videos, (720, 1280), frames)
    make_many(many, args.many)
    prepare(many, many + "-prepared", short_side=32, workers=args.workers, progress=False)
    write_former_format(raw, former)
    one_core, source_frames, kbytes_per_s = timed_prepare(raw, prepared, 0)
    one_thread_per_worker()  # this process is "one worker" from here on

    result = {"device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
              "torch": torch.__version__, "av": av.__version__, "commit": commit(),
              "date": datetime.date.today().isoformat(),
              "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv), "workers": args.workers,
              "clip": CLIP, "sources": f"{args.videos} H.264 videos 1280x720, {frames} frames, libx264 defaults",
              "prepare": {"s_per_1000_frames_one_core": 1000 * one_core / source_frames,
                          "kbytes_per_s_of_video": kbytes_per_s},
              "rows": {}}
    cases = (("raw 720p · PyAV · uint8 items", raw, "auto", False, 24),
             ("raw 720p · OpenCV · float items (as before)", raw, "opencv", True, 24),
             ("prepared H.264 · PyAV · uint8 items", prepared, "auto", False, 400),
             ("prepared mp4v · OpenCV · float items (as before)", former, "opencv", True, 400))
    for name, data, reader, floats, default_clips in cases:
        clips = args.clips or default_clips
        row = {"per_worker": per_worker(data, reader, floats, clips, args.repeats),
               "loader": through_loader(data, reader, floats, clips, args.workers, args.repeats),
               "size": "{width}x{height}".format(**describe(os.path.join(data, find_videos(data)[0])))}
        result["rows"][name] = row
        w = row["per_worker"]
        print(f"{name:48s} {row['size']:>8s}: {w['clips_per_s']:7.1f} clips/s per worker, "
              f"{row['loader']:7.1f} with {args.workers} workers, {w['decoded_per_clip']:.1f} decoded/clip")
    result["formats"] = formats(os.path.join(raw, find_videos(raw)[0]), os.path.join(args.data, "formats"))
    without, files, probed = startup_seconds(many + "-prepared", None, args.repeats)
    with_manifest, _, probed_with = startup_seconds(many + "-prepared", "auto", args.repeats)
    result["startup"] = {"files": files, "without_manifest_s": without, "with_manifest_s": with_manifest,
                         "probed_without": probed, "probed_with": probed_with}

    print(f"\n| one worker ({CLIP['clip_len']}x{CLIP['crop_size']}x{CLIP['crop_size']} training clips) | clips/s | "
          f"{args.workers} workers | decoded frames/clip | KB shipped/clip | "
          + " | ".join(f"{s} ms" for s in STAGES + ("rest",)) + " |")
    print("| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES + ("rest",)) + " |")
    for name, row in result["rows"].items():
        w = row["per_worker"]
        print(f"| {name} ({row['size']}) | {w['clips_per_s']:.1f} | {row['loader']:.1f} | {w['decoded_per_clip']:.1f} | "
              f"{w['bytes_per_clip'] / 1024:.0f} | " + " | ".join(f"{w['ms'][s]:.2f}" for s in STAGES + ("rest",)) + " |")
    f = result["formats"]
    print(f"\nprepared formats at {f['size']} (one source, {f['frames']} frames):\n| format | KB per s of video | "
          "PSNR | clip reads/s | decoded frames/clip |\n| --- | ---: | ---: | ---: | ---: |")
    for name, row in f["formats"].items():
        print(f"| {name} | {row['kbytes_per_s']:.1f} | {row['psnr_db']:.1f} dB | {row['clip_reads_per_s']:.0f} | "
              f"{row['decoded_per_clip']:.1f} |")
    pr, s = result["prepare"], result["startup"]
    print(f"\nprepare: {pr['s_per_1000_frames_one_core']:.1f} s per 1000 720p source frames on one core "
          f"(workers=0); the prepared videos take {pr['kbytes_per_s_of_video']:.1f} KB per second")
    print(f"start-up on {files} files: {without:.3f} s without the manifest, {with_manifest:.3f} s with it")
    stem = args.out or os.path.join(RESULTS, f"{result['date']}-cpu-data.json")
    save(result, stem)
    chart(result, os.path.splitext(stem)[0] + ".png")


if __name__ == "__main__":
    main()
