#!/usr/bin/env python3
"""Prediction benchmark: what ``r2p1d predict`` sustains, and whether decoding and the
network overlap.

On the 720p sources of bench/bench_data.py (1280x720, 25 fps, H.264 from PyAV's libx264
with its defaults) and on their prepared copy (short side 128), with r2plus1d_18 (random
weights, 400 classes; Kinetics preprocessing: 16 frames, short side 128, centre crop 112)
and --clips clips per video, in one process:
1. decode alone: the prediction DataLoader iterated without the network (clips/s);
2. network alone: the same number of clips, already decoded, through the model (clips/s);
3. end to end: ``predict()`` with --workers 0 (decode, then network, in turn) and with
   --workers N (decoding in worker processes while the network runs): videos/s and clips/s.
With overlap, end-to-end time approaches the larger of (1) and (2) instead of their sum.
Medians of --repeats passes after one warm-up pass; the page cache is warm.

    python bench/bench_predict.py                   # ~5 min on 2 cores
    python bench/bench_predict.py --videos 2 --clips 2 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

from common import RESULTS, commit, cpu_name, pyplot, save, save_figure  # (puts the repository on the path)
from bench_data import make_sources, timed_prepare
from r2p1d_ext.models import build_model
from r2p1d_ext.models.loading import TORCHVISION_PREPROCESSING, LoadedModel
from r2p1d_ext.train.predict import _Clips, find_videos, plan_clips, predict


def _median_seconds(fn, repeats):
    fn()  # warm-up: first-call costs (thread pools, folded weights, page cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(videos, loaded, clips, workers, batch, repeats):
    cfg = loaded.config
    plans = [plan_clips(v, cfg["clip_len"], cfg["frame_stride"], clips, None) for v in videos]
    n_clips = sum(len(p.starts) for p in plans)

    def decode():
        for _ in DataLoader(_Clips(plans, cfg), batch_size=None, num_workers=0):
            pass
    x = torch.randn(batch, 3, cfg["clip_len"], cfg["crop_size"], cfg["crop_size"])
    model = loaded.model.eval()

    def network():
        with torch.no_grad():
            for _ in range(0, n_clips, batch):
                model(x)

    row = {"clips": n_clips, "videos": len(videos),
           "decode_clips_per_s": n_clips / _median_seconds(decode, repeats),
           "network_clips_per_s": n_clips / _median_seconds(network, repeats)}
    for w in (0, workers):
        seconds = _median_seconds(lambda: predict(loaded, videos, clips, batch_size=batch, workers=w,
                                                  device="cpu", progress=False), repeats)
        row[f"predict_w{w}_videos_per_s"] = len(videos) / seconds
        row[f"predict_w{w}_clips_per_s"] = n_clips / seconds
    serial = 1 / row["decode_clips_per_s"] + 1 / row["network_clips_per_s"]
    row["sum_of_parts_clips_per_s"] = 1 / serial
    row["max_of_parts_clips_per_s"] = min(row["decode_clips_per_s"], row["network_clips_per_s"])
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/bench_data", help="where the generated videos live (reused)")
    p.add_argument("--videos", type=int, default=4, help="720p source videos")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each source video (25 fps)")
    p.add_argument("--clips", type=int, default=5, help="clips per video")
    p.add_argument("--batch", type=int, default=8, help="clips per network call")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="decoding processes")
    p.add_argument("--arch", default="r2plus1d_18")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-cpu-predict.json)")
    args = p.parse_args(argv)

    raw, prepared = os.path.join(args.data, "raw720p-h264"), os.path.join(args.data, "prepared128-h264")
    make_sources(raw, args.videos, (720, 1280), round(args.seconds * 25))
    if not os.path.isdir(prepared) or len(find_videos([prepared])) < args.videos:
        timed_prepare(raw, prepared, args.workers)
    torch.manual_seed(0)
    loaded = LoadedModel(build_model(args.arch, 400).eval(), [f"class{i}" for i in range(400)],
                         {"arch": args.arch, **TORCHVISION_PREPROCESSING})
    result = {"device": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "commit": commit(), "date": datetime.date.today().isoformat(),
              "command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0]] + list(argv)),
              "arch": args.arch, "clips_per_video": args.clips, "batch": args.batch, "workers": args.workers,
              "sources": f"1280x720, {round(args.seconds * 25)} frames at 25 fps, mp4v", "rows": {}}
    for name, folder in (("raw 720p", raw), ("prepared 128", prepared)):
        videos = find_videos([folder])[:args.videos]
        result["rows"][name] = row = measure(videos, loaded, args.clips, args.workers, args.batch, args.repeats)
        print(f"{name}: decode {row['decode_clips_per_s']:.1f} clips/s, network {row['network_clips_per_s']:.1f} "
              f"clips/s; predict with 0 workers {row['predict_w0_clips_per_s']:.1f} clips/s "
              f"({row['predict_w0_videos_per_s']:.2f} videos/s), with {args.workers} workers "
              f"{row[f'predict_w{args.workers}_clips_per_s']:.1f} clips/s "
              f"({row[f'predict_w{args.workers}_videos_per_s']:.2f} videos/s); serial bound "
              f"{row['sum_of_parts_clips_per_s']:.1f}, overlap bound {row['max_of_parts_clips_per_s']:.1f}")
    out = args.out or os.path.join(RESULTS, f"{result['date']}-cpu-predict.json")
    save(result, out)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        keys = ["decode_clips_per_s", "network_clips_per_s", "predict_w0_clips_per_s",
                f"predict_w{args.workers}_clips_per_s"]
        labels = ["decode alone", "network alone", "predict, 0 workers", f"predict, {args.workers} workers"]
        for i, (name, row) in enumerate(result["rows"].items()):
            ax.bar([k + 0.4 * i for k in range(len(keys))], [row[k] for k in keys], 0.4, label=name)
        ax.set_xticks([k + 0.2 for k in range(len(keys))], labels, fontsize=8)
        ax.set_ylabel("clips/s")
        ax.legend(fontsize=8)
        save_figure(fig, f"r2p1d predict, {args.arch}, {result['device']}, torch {result['torch']}",
                    out.replace(".json", ".png"))
    return result


if __name__ == "__main__":
    main()
