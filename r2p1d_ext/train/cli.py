"""The ``r2p1d`` command's sub-commands: make-synthetic, prepare, train, eval. Its entry
point, r2p1d_ext/cli.py, says which extra to install when this package's are missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import List, Optional

from ..models import ARCHS
from .config import TrainConfig
from .evaluation import evaluate_checkpoint
from .loop import train


def _number(kind, minimum, name):
    """An argparse type: a finite `kind` (int or float) of at least `minimum`, with a message
    naming the option, what was expected and what was given."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a finite value >= {minimum}, got {text}")
        return value
    parse.__name__ = name  # argparse's "invalid <name> value" text
    return parse


# Smallest sensible value of each numeric option (1: counts and sizes; 0: may be off).
_INT_MINIMUM = {"epochs": 1, "batch_size": 1, "clip_len": 1, "frame_stride": 1, "short_side": 1, "crop_size": 1,
                "workers": 0, "eval_clips": 1, "checkpoint_every": 0, "stop_after_steps": 0, "seed": 0,
                "step_epochs": 1}
_FLOAT_MINIMUM = {"lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0, "gamma": 0.0,
                  "clip_grad": 0.0}


def _train_parser(sub):
    p = sub.add_parser("train", help="train (or resume) a classifier on DIR/{train,val}/{class}/{videos}")
    d = TrainConfig("", "")
    p.add_argument("--data", required=True, help="dataset root with train/ and val/ class folders")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, metrics.json, PNGs")
    p.add_argument("--arch", default=d.arch, choices=sorted(ARCHS))
    for name, minimum in _INT_MINIMUM.items():
        p.add_argument("--" + name.replace("_", "-"), type=_number(int, minimum, "integer"), default=getattr(d, name))
    for name, minimum in _FLOAT_MINIMUM.items():
        p.add_argument("--" + name.replace("_", "-"), type=_number(float, minimum, "number"), default=getattr(d, name))
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "step"])
    p.add_argument("--amp", nargs="?", const="bfloat16", default=None, choices=["bfloat16", "float16"],
                   help="mixed precision (default dtype bfloat16; float16 uses a GradScaler on CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last_3d model and inputs (default: on CUDA, not on the CPU)")
    p.add_argument("--no-hflip", dest="hflip", action="store_false",
                   help="no horizontal flips (for classes that depend on left/right motion)")
    p.add_argument("--sync-bn", action="store_true",
                   help="with several processes (torchrun), BatchNorm statistics over all of them: the standalone "
                        "layers and the fused blocks (CPU and CUDA)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _prepare_parser(sub):
    p = sub.add_parser("prepare", help="downsample every video under SRC into DST once (mirrored layout, "
                                       "short side resized, optional lower fps, a manifest); resumable")
    p.add_argument("src", help="source folder, e.g. with train/ and val/ class folders of videos")
    p.add_argument("dst", help="output folder (the dataset root to train on)")
    p.add_argument("--short-side", type=_number(int, 2, "integer"), default=128,
                   help="short side of the output in pixels, even (default 128)")
    p.add_argument("--fps", type=_number(float, 0.01, "number"), default=None,
                   help="lower the frame rate to this (default: keep the source's)")
    p.add_argument("--workers", type=_number(int, 0, "integer"), default=None,
                   help="worker processes (default: one per core; 0: in this process)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _run_prepare(args, parser) -> int:
    from ..data.prepare import FolderBusyError, prepare
    try:
        s = prepare(args.src, args.dst, args.short_side, args.fps, args.workers, args.progress)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    except FolderBusyError as err:
        print(f"r2p1d prepare: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every finished video is kept; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"prepared {s['prepared']}, already done {s['skipped']}, skipped {len(s['failed'])} unreadable, "
          f"{len(s['truncated'])} truncated (kept what decoded) -> {s['manifest']}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="r2p1d", description="R(2+1)D video classification on fused kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    ms = sub.add_parser("make-synthetic", help="write the built-in synthetic motion video dataset")
    ms.add_argument("dir")
    ms.add_argument("--train-per-class", type=_number(int, 1, "integer"), default=40)
    ms.add_argument("--val-per-class", type=_number(int, 1, "integer"), default=12)
    ms.add_argument("--frames", type=_number(int, 1, "integer"), default=16)
    ms.add_argument("--seed", type=_number(int, 0, "integer"), default=0)
    _prepare_parser(sub)
    _train_parser(sub)
    ev = sub.add_parser("eval", help="evaluate a checkpoint; prints and writes the metrics")
    ev.add_argument("--data", required=True)
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", default="val")
    ev.add_argument("--batch-size", type=_number(int, 1, "integer"), default=8)
    ev.add_argument("--workers", type=_number(int, 0, "integer"), default=2)
    ev.add_argument("--eval-clips", type=_number(int, 1, "integer"), default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--out", default=None, help="JSON path (default: eval_<split>.json beside the checkpoint)")
    args = parser.parse_args(argv)

    if args.command == "make-synthetic":
        from ..data.synthetic import make_synthetic
        counts = make_synthetic(args.dir, (args.train_per_class, args.val_per_class), frames=args.frames,
                                seed=args.seed)
        print(f"wrote {counts['train']} train and {counts['val']} val videos under {args.dir}")
        return 0
    if args.command == "prepare":
        return _run_prepare(args, parser)
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        result = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
        return 3 if result.get("interrupted") else 0
    metrics = evaluate_checkpoint(args.data, args.checkpoint, args.split, args.batch_size, args.workers,
                                  args.eval_clips, args.device)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"eval_{args.split}.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"{args.split}: clip top-1 {metrics['val_top1']:.4f}  top-5 {metrics['val_top5']:.4f}  "
          f"video top-1 {metrics['val_video_top1']:.4f}  loss {metrics['val_loss']:.4f}  "
          f"(epoch {metrics['epoch']}, {metrics['skipped_videos']} videos skipped) -> {out}")
    return 0

