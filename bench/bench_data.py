#!/usr/bin/env python3
"""Data-loading benchmark: what ``r2p1d prepare`` buys.

1. Clips/s of VideoDataset (training clips: 16 frames, short side 128, random 112 crop) on a
   set of 720p videos ("raw") and on its prepared copy (short side 128), per worker (in this
   process) and through a DataLoader with --workers processes.
2. Start-up time of VideoDataset on a folder of many small prepared files, with its manifest
   and without (every file opened to count its frames).
3. How long ``prepare`` took, in videos/s.
4. The codecs OpenCV can write here, at the prepared size: size, PSNR, clip-read speed
   (why ``prepare`` writes mp4v).

The videos are made with the project's own tools (the synthetic generator's moving shapes
on textured, noisy backgrounds, at 1280x720, 25 fps, MPEG-4 Part 2: pip's OpenCV writes no
H.264) under --data (git-ignored data/ by default) and reused by later runs. OpenCV puts a
keyframe every 12 frames in them, so seeking in these sources is cheaper than in typical
camera or web H.264 files (keyframes seconds apart): the raw figures here flatter the raw
set. Every pass runs on a warm page cache (the files were just written or read).

    python bench/bench_data.py                      # ~5 min on 2 cores, the first run longer
    python bench/bench_data.py --videos 4 --many 200 --repeats 1   # quick look
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

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, commit, cpu_name, pyplot, save, save_figure  # noqa: E402
from r2p1d_ext.data.dataset import VideoDataset  # noqa: E402
from r2p1d_ext.data.prepare import describe, find_videos, prepare  # noqa: E402
from r2p1d_ext.data.synthetic import DEFAULT_CLASSES, render_video, write_video  # noqa: E402

CLIP = dict(clip_len=16, short_side=128, crop_size=112)


def make_sources(root, count, size, frames, progress=True):
    """`count` videos of `size` (h, w) and `frames` frames under root/train/<class>/, once
    (a marker file names what was made, so a change of the options makes them anew)."""
    marker = os.path.join(root, f".complete-{count}x{size[0]}x{size[1]}x{frames}")
    if os.path.exists(marker):
        return
    from tqdm import tqdm
    rng = np.random.default_rng(0)
    for i in tqdm(range(count), desc=f"sources -> {root}", unit="video", disable=not progress):
        cls = DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)]
        folder = os.path.join(root, "train", cls)
        os.makedirs(folder, exist_ok=True)
        write_video(os.path.join(folder, f"{i:05d}.mp4"), render_video(rng, cls, frames, size))
    open(marker, "w").close()


def timed_prepare(src, dst, workers, short_side=128, fresh=True):
    """Prepares src into dst (from scratch with `fresh`); returns videos/s."""
    if fresh and os.path.isdir(dst):
        shutil.rmtree(dst)
    before = time.perf_counter()
    summary = prepare(src, dst, short_side=short_side, workers=workers, progress=False)
    if summary["failed"]:
        raise RuntimeError(f"prepare failed on {summary['failed']}")
    return (summary["prepared"] + summary["skipped"]) / (time.perf_counter() - before)


def clips_per_second_in_process(data, clips, repeats):
    """Median over `repeats` passes of clips/s reading `clips` random training clips in this
    process (one worker's speed), after one untimed clip."""
    ds = VideoDataset(data, "train", seed=0, **CLIP)
    order = np.random.default_rng(1).integers(0, len(ds), size=clips)
    ds[int(order[0])]
    rates = []
    for r in range(repeats):
        ds.set_epoch(r)
        start = time.perf_counter()
        for i in order:
            ds[int(i)]
        rates.append(clips / (time.perf_counter() - start))
    return statistics.median(rates)


def clips_per_second_loader(data, clips, workers, repeats, batch=4):
    """Median clips/s of a DataLoader with `workers` processes; the clock starts at the first
    batch (worker start-up left out) and runs over `clips` more clips."""
    ds = VideoDataset(data, "train", seed=0, **CLIP)
    rates = []
    for r in range(repeats):
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=clips + batch,
                                                 generator=torch.Generator().manual_seed(r))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
        it = iter(loader)
        next(it)
        start, seen = time.perf_counter(), 0
        for batch_items in it:
            seen += len(batch_items[0])
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def startup_seconds(data, manifest, repeats):
    """Median seconds to construct VideoDataset on `data` (train split)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ds = VideoDataset(data, "train", manifest=manifest, clip_len=8, short_side=32, crop_size=32)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(ds.videos), ds.probed


CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"), ("VP90", ".webm"), ("FFV1", ".mkv"))


def codec_comparison(source, out_dir, short_side, seconds=2.0):
    """Why prepare writes mp4v: one source video resized as prepare resizes it, written with
    each codec OpenCV's FFmpeg can write here; per codec the bytes per second of video, the
    PSNR against the resized frames, and the rate of random 16-frame clip reads
    (read_frames: seek + decode, no transform) over `seconds`."""
    from r2p1d_ext.data.video import probe_frame_count, read_frames
    from r2p1d_ext.data.prepare import output_size
    cap = cv2.VideoCapture(source)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        h, w = output_size(f.shape[0], f.shape[1], short_side)
        frames.append(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA))
    cap.release()
    frames = np.stack(frames)
    os.makedirs(out_dir, exist_ok=True)
    rows = {}
    for fourcc, ext in CODECS:
        path = os.path.join(out_dir, fourcc + ext)
        writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), 25, (w, h))
        if not writer.isOpened():
            print(f"{fourcc}: OpenCV cannot write it here")
            continue
        for f in frames:
            writer.write(f)
        writer.release()
        n = probe_frame_count(path)
        decoded = read_frames(path, 0, n, 1, n)[..., ::-1].astype(np.float64)
        mse = ((decoded - frames) ** 2).mean()
        rng, count = np.random.default_rng(0), 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            read_frames(path, int(rng.integers(0, n - 15)), 16, 1, n)
            count += 1
        rows[fourcc] = {"container": ext, "kbytes_per_s": os.path.getsize(path) / 1024 / (len(frames) / 25),
                        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse),
                        "clip_reads_per_s": count / (time.perf_counter() - start)}
    return {"size": f"{w}x{h}", "frames": len(frames), "codecs": rows}


def chart(result, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = result["clips_per_s"]
    labels = ["1 worker", f"{result['workers']} workers"]
    x = np.arange(2)
    for k, (name, color) in enumerate((("raw", "tab:gray"), ("prepared", "tab:blue"))):
        vals = [rows[name]["per_worker"], rows[name]["loader"]]
        bars = ax1.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=f"{name} ({rows[name]['size']})", color=color)
        ax1.bar_label(bars, fmt="%.1f", fontsize=7)
    ax1.set_xticks(x, labels)
    ax1.set_yscale("log")
    ax1.set_ylabel("training clips/s (log)")
    ax1.legend(fontsize=7)
    s = result["startup"]
    bars = ax2.bar(["no manifest", "manifest"], [s["without_manifest_s"], s["with_manifest_s"]],
                   color=["tab:gray", "tab:blue"])
    ax2.bar_label(bars, fmt="%.3f s", fontsize=7)
    ax2.set_ylabel(f"VideoDataset start-up, {s['files']} files (s)")
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
    raw, prepared = os.path.join(args.data, "raw720p"), os.path.join(args.data, "prepared128")
    many_raw, many = os.path.join(args.data, "many_raw"), os.path.join(args.data, "many_prepared")
    frames = round(args.seconds * 25)
    make_sources(raw, args.videos, (720, 1280), frames)
    make_sources(many_raw, args.many, (48, 64), 16)
    prepare_rate = timed_prepare(raw, prepared, args.workers)
    timed_prepare(many_raw, many, args.workers, short_side=32, fresh=False)

    result = {"device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
              "torch": torch.__version__, "commit": commit(), "date": datetime.date.today().isoformat(),
              "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv), "workers": args.workers,
              "clip": CLIP, "sources": f"{args.videos} videos 1280x720, {frames} frames, mp4v",
              "prepare_videos_per_s": prepare_rate, "clips_per_s": {}}
    for name, data, default_clips in (("raw", raw, 24), ("prepared", prepared, 400)):
        clips = args.clips or default_clips
        per_worker = clips_per_second_in_process(data, clips, args.repeats)
        loader = clips_per_second_loader(data, clips, args.workers, args.repeats)
        h, w = _frame_size(data)
        result["clips_per_s"][name] = {"per_worker": per_worker, "loader": loader, "size": f"{w}x{h}"}
        print(f"{name:9s} {w}x{h}: {per_worker:7.1f} clips/s per worker, {loader:7.1f} with {args.workers} workers")
    r = result["clips_per_s"]
    result["speedup_per_worker"] = r["prepared"]["per_worker"] / r["raw"]["per_worker"]
    result["speedup_loader"] = r["prepared"]["loader"] / r["raw"]["loader"]
    result["codec_comparison"] = codec_comparison(os.path.join(raw, find_videos(raw)[0]),
                                                  os.path.join(args.data, "codecs"), 128)
    without, files, probed = startup_seconds(many, None, args.repeats)
    with_manifest, _, probed_with = startup_seconds(many, "auto", args.repeats)
    result["startup"] = {"files": files, "without_manifest_s": without, "with_manifest_s": with_manifest,
                         "probed_without": probed, "probed_with": probed_with,
                         "speedup": without / with_manifest}

    print(f"\n| | raw 720p | prepared (short side 128) | gain |\n| --- | ---: | ---: | ---: |")
    print(f"| clips/s, 1 worker | {r['raw']['per_worker']:.1f} | {r['prepared']['per_worker']:.1f} | "
          f"{result['speedup_per_worker']:.1f}x |")
    print(f"| clips/s, {args.workers} workers | {r['raw']['loader']:.1f} | {r['prepared']['loader']:.1f} | "
          f"{result['speedup_loader']:.1f}x |")
    s = result["startup"]
    print(f"\nstart-up on {files} files: {s['without_manifest_s']:.3f} s without the manifest, "
          f"{s['with_manifest_s']:.3f} s with it ({s['speedup']:.0f}x)")
    print(f"prepare: {prepare_rate:.2f} videos/s ({frames}-frame 720p videos, {args.workers} workers)")
    c = result["codec_comparison"]
    print(f"\ncodecs at {c['size']} (one source, {c['frames']} frames):\n| codec | KB per s of video | PSNR | "
          "16-frame clip reads/s |\n| --- | ---: | ---: | ---: |")
    for name, row in c["codecs"].items():
        print(f"| {name} ({row['container']}) | {row['kbytes_per_s']:.0f} | {row['psnr_db']:.1f} dB | "
              f"{row['clip_reads_per_s']:.0f} |")
    stem = args.out or os.path.join(RESULTS, f"{result['date']}-cpu-data.json")
    save(result, stem)
    chart(result, os.path.splitext(stem)[0] + ".png")


def _frame_size(data):
    """(height, width) of the first video under `data`."""
    row = describe(os.path.join(data, find_videos(data)[0]))
    return row["height"], row["width"]


if __name__ == "__main__":
    main()
