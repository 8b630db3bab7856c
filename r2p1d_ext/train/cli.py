"""The ``r2p1d`` command's sub-commands: make-synthetic, prepare, train, eval, predict, and
(from r2p1d_ext/tools/cli.py, which needs no [train] extra) check, export, bench. Its entry
point, r2p1d_ext/cli.py, says which extra to install when this package's are missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional

from ..models import ARCHS
from .config import TrainConfig
from .evaluation import evaluate_checkpoint
from .loop import train
from .reports import shows_top5
from .._cli_common import Defaults as _Defaults, number as _number, plural, run_command
from ..tools import cli as tools


# What each numeric option of `train` means (its default is shown beside it by --help).
_HELP = {
    "epochs": "epochs to train (a resumed run stops here too)",
    "batch_size": "clips per step and process",
    "clip_len": "frames per clip",
    "frame_stride": "take every n-th frame of the video",
    "short_side": "resize the short side of the frames to this (pixels)",
    "crop_size": "square crop (random in training, centred in evaluation)",
    "workers": "DataLoader worker processes per training process, each with one decoder thread (0: decode in "
               "the training process; default: the cores per process on this machine, less one)",
    "prefetch": "batches each loader worker prepares ahead",
    "eval_clips": "clips per validation video, spread over it (video-level scores average them)",
    "eval_every": "evaluate every N epochs (and after the last), sharded over the processes",
    "log_every": "every N steps a steps.csv row, TensorBoard scalars and the progress bar's fields: loss, lr, "
                 "clips/s, the share of time spent waiting for data, peak GPU memory (0: none)",
    "checkpoint_every": "also write a checkpoint every N steps (0: at epoch ends only)",
    "stop_after_steps": "stop after N steps of this run with a checkpoint, exit status 3 (0: no limit)",
    "seed": "seed of the model, the sampling and the augmentation",
    "step_epochs": "--schedule step: multiply the learning rate by --gamma every N epochs",
    "lr": "peak learning rate (SGD), for 8 clips per process: scale it with the global batch",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay of the weights (not of biases and BatchNorm)",
    "warmup_epochs": "linear warm-up of the learning rate, in epochs",
    "gamma": "--schedule step: the learning-rate factor",
    "clip_grad": "clip the gradient norm to this (0: off)",
}
# Smallest sensible value of each numeric option (1: counts and sizes; 0: may be off).
_INT_MINIMUM = {"epochs": 1, "batch_size": 1, "clip_len": 1, "frame_stride": 1, "short_side": 1, "crop_size": 1,
                "workers": 0, "prefetch": 1, "eval_clips": 1, "eval_every": 1, "log_every": 0, "checkpoint_every": 0,
                "stop_after_steps": 0, "seed": 0, "step_epochs": 1}
_FLOAT_MINIMUM = {"lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0, "gamma": 0.0,
                  "clip_grad": 0.0}


def _train_parser(sub, common):
    p = sub.add_parser("train", help="train (or resume) a classifier on DIR/{train,val}/{class}/{videos}",
                       parents=[common], formatter_class=_Defaults)
    d = TrainConfig("", "")
    p.add_argument("--data", required=True, help="dataset root: the folder that holds train/ and val/, each with "
                                                  "one sub-folder of videos per class")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, metrics.json, PNGs")
    p.add_argument("--arch", default=d.arch, choices=sorted(ARCHS), help="network")
    for name, minimum in _INT_MINIMUM.items():
        p.add_argument("--" + name.replace("_", "-"), type=_number(int, minimum, "integer"), default=getattr(d, name),
                       help=_HELP[name])
    for name, minimum in _FLOAT_MINIMUM.items():
        p.add_argument("--" + name.replace("_", "-"), type=_number(float, minimum, "number"), default=getattr(d, name),
                       help=_HELP[name])
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "step"],
                   help="learning-rate schedule after the warm-up")
    p.add_argument("--amp", nargs="?", const="bfloat16", default=None, choices=["bfloat16", "float16"],
                   help="mixed precision (default dtype bfloat16; float16 uses a GradScaler on CUDA); on the CPU "
                        "bfloat16 runs on AMX or AVX512-BF16 where the CPU has them, and is not yet faster than "
                        "eager PyTorch's there (README: Precision on the CPU)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"],
                   help="the model's dtype (float64: slow, for checks that two runs train the same weights)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last_3d model and inputs (default: on CUDA, not on the CPU)")
    p.add_argument("--no-hflip", dest="hflip", action="store_false",
                   help="turn off the random horizontal flips of training clips, which are on by default (for "
                        "classes that depend on left/right motion)")
    p.add_argument("--sync-bn", action="store_true",
                   help="with several processes (torchrun), BatchNorm statistics over all of them: the standalone "
                        "layers and the fused blocks (CPU and CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--init", default=None, metavar="FILE",
                   help="fine-tune: start from these weights, a torchvision r2plus1d_* state_dict (e.g. Kinetics-400) "
                        "or a checkpoint of r2p1d train; the classifier is replaced when the class count differs")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars (shown by default)")


def _prepare_parser(sub, common):
    p = sub.add_parser("prepare", help="downsample every video under SRC into DST once (mirrored layout, "
                                       "short side resized, optional lower fps, a manifest); resumable",
                       parents=[common], formatter_class=_Defaults)
    p.add_argument("src", help="source folder, e.g. with train/ and val/ class folders of videos")
    p.add_argument("dst", help="output folder (the dataset root to train on)")
    p.add_argument("--short-side", type=_number(int, 2, "integer"), default=128,
                   help="short side of the output in pixels, even (default 128)")
    p.add_argument("--fps", type=_number(float, 0.01, "number"), default=None,
                   help="lower the frame rate to this (default: keep the source's)")
    p.add_argument("--workers", type=_number(int, 0, "integer"), default=None,
                   help="worker processes (default: one per core; 0: in this process)")
    p.add_argument("--keyframe-interval", type=_number(int, 1, "integer"), default=16,
                   help="frames from one keyframe to the next; a clip decodes at most clip length + this - 1 frames")
    p.add_argument("--crf", type=_number(int, 0, "integer"), default=20,
                   help="libx264 constant quality, 0-51 (lower: better, larger files)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars (shown by default)")


def _run_prepare(args) -> int:
    from ..data.prepare import prepare
    try:  # a wrong path or setting, a busy folder: one line (run_command)
        s = prepare(args.src, args.dst, args.short_side, args.fps, args.workers, args.progress,
                    args.keyframe_interval, args.crf)
    except KeyboardInterrupt:
        print("interrupted: every finished video is kept; run the same command again to resume", file=sys.stderr)
        return 130
    rewritten = f" ({s['rewritten']} rewritten: another codec or keyframe interval)" if s["rewritten"] else ""
    print(f"prepared {s['prepared']}{rewritten} with {s['encoder']}, already done {s['skipped']}, "
          f"skipped {len(s['failed'])} unreadable, "
          f"{len(s['truncated'])} truncated (kept what decoded) -> {s['manifest']}")
    return 0


def _predict_parser(sub, common):
    p = sub.add_parser("predict", help="classify video files with a trained model (whole videos, or window by window)",
                       parents=[common], formatter_class=_Defaults)
    p.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER", help="video files, or folders walked for them")
    tools.model_options(p)
    p.add_argument("--top-k", type=_number(int, 1, "integer"), default=5, help="classes shown per video or window")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--clips", type=_number(int, 1, "integer"), default=10,
                      help="clips per video, spread over it; their scores are averaged")
    mode.add_argument("--window-stride", type=_number(float, 1e-3, "number"), default=None, metavar="SECONDS",
                      help="instead: one prediction per window, a clip every SECONDS along the whole video")
    p.add_argument("--out", default=None, help="also write the predictions: .jsonl (one object per video) or .csv")
    p.add_argument("--batch-size", type=_number(int, 1, "integer"), default=16, help="clips per network call")
    p.add_argument("--workers", type=_number(int, 0, "integer"), default=2, help="DataLoader worker processes decoding")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--amp", nargs="?", const="bfloat16", default=None, choices=["bfloat16", "float16"],
                   help="mixed precision (default dtype bfloat16); on the CPU bfloat16 runs on AMX or AVX512-BF16 "
                        "where the CPU has them (README: Precision on the CPU)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar (shown by default)")


def _run_predict(args) -> int:
    from .predict import find_videos, format_table, predict, write_predictions
    loaded = tools.load_from_args(args)
    videos = find_videos(args.videos)
    if not videos:
        raise FileNotFoundError(f"no video files (extensions .mp4, .avi, ...) in {' '.join(args.videos)}")
    results = predict(loaded, videos, args.clips, args.window_stride, args.top_k, args.batch_size, args.workers,
                      args.device, args.amp, args.progress)
    print(format_table(results))
    if args.out:
        write_predictions(results, args.out)
    failed = sum(r.error is not None for r in results)
    done = len(results) - failed
    print(f"{done} video{'' if done == 1 else 's'} classified, {failed} unreadable"
          + (f" -> {args.out}" if args.out else ""))
    return 0 if failed < len(results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``r2p1d`` command's parser, with its sub-commands."""
    parser = argparse.ArgumentParser(prog="r2p1d", description="R(2+1)D video classification on fused kernels")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, show the whole traceback (default: one line saying what to fix)")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = _Defaults
    ms = sub.add_parser("make-synthetic", help="write the built-in synthetic motion video dataset",
                        parents=[common], formatter_class=defaults)
    ms.add_argument("dir", help="output folder (train/ and val/ with one folder per motion class)")
    ms.add_argument("--train-per-class", type=_number(int, 1, "integer"), default=40, help="training videos per class")
    ms.add_argument("--val-per-class", type=_number(int, 1, "integer"), default=12, help="validation videos per class")
    ms.add_argument("--frames", type=_number(int, 1, "integer"), default=16, help="frames per video")
    ms.add_argument("--seed", type=_number(int, 0, "integer"), default=0, help="random seed of the videos")
    _prepare_parser(sub, common)
    _train_parser(sub, common)
    ev = sub.add_parser("eval", help="evaluate a checkpoint; prints and writes the metrics", parents=[common],
                        formatter_class=defaults)
    ev.add_argument("--data", required=True, help="dataset root: the folder that holds the split's folder")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by r2p1d train")
    ev.add_argument("--split", default="val", help="the split folder under --data")
    ev.add_argument("--batch-size", type=_number(int, 1, "integer"), default=8, help="clips per batch")
    ev.add_argument("--workers", type=_number(int, 0, "integer"), default=2, help="DataLoader worker processes")
    ev.add_argument("--eval-clips", type=_number(int, 1, "integer"), default=None,
                    help="clips per video (default: the checkpoint's training setting)")
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    ev.add_argument("--out", default=None, help="JSON path (default: eval_<split>.json beside the checkpoint)")
    _predict_parser(sub, common)
    tools.add_parsers(sub, common)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, lambda: _run(args))


def _run(args) -> int:
    if args.command in tools.COMMANDS:
        return tools.run(args)
    if args.command == "predict":
        return _run_predict(args)
    if args.command == "make-synthetic":
        from ..data.synthetic import make_synthetic
        counts = make_synthetic(args.dir, (args.train_per_class, args.val_per_class), frames=args.frames,
                                seed=args.seed)
        print(f"wrote {counts['train']} train and {counts['val']} val videos under {args.dir}")
        return 0
    if args.command == "prepare":
        return _run_prepare(args)
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        result = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
        return 3 if result.get("interrupted") else 0
    metrics = evaluate_checkpoint(args.data, args.checkpoint, args.split, args.batch_size, args.workers,
                                  args.eval_clips, args.device)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"eval_{args.split}.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    top5 = f"top-5 {metrics['val_top5']:.4f}  " if shows_top5(len(metrics["classes"])) else ""
    print(f"{args.split}: clip top-1 {metrics['val_top1']:.4f}  {top5}"
          f"video top-1 {metrics['val_video_top1']:.4f}  loss {metrics['val_loss']:.4f}  "
          f"(epoch {metrics['epoch']}, {plural(metrics['skipped_videos'], 'video')} skipped) -> {out}")
    return 0

