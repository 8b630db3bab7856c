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

from ..data.annotations import FORMATS
from ..models import ARCHS
from ..models.presets import PRESETS, preset
from .config import TrainConfig
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
    "clips_per_video": "training clips per video and epoch, each with its own random start (torchvision's "
                       "Kinetics recipe: 5)",
    "eval_crops": "spatial crops per validation clip: 1 the centre, 3 both ends and the centre of the long side "
                  "(the 3-crop test protocol)",
    "freeze_stages": "fine-tuning: freeze the first K stages of stem, layer1..layer4 (their weights and "
                     "BatchNorm statistics; 5: train the classifier alone)",
    "backbone_lr_mult": "fine-tuning: the backbone's learning rate is --lr times this",
    "head_lr_mult": "fine-tuning: the classifier's learning rate is --lr times this",
    "dropout": "dropout before the classifier",
    "label_smoothing": "label smoothing of the training loss (as F.cross_entropy's)",
    "mixup": "mixup of training batches with weights ~ Beta(a, a) (0: off; 0.2-0.8 usual)",
    "cutmix": "CutMix of training batches with weights ~ Beta(a, a) (0: off; 1.0 usual); with --mixup each "
              "batch takes one of them",
}
# Smallest sensible value of each numeric option (1: counts and sizes; 0: may be off).
_INT_MINIMUM = {"epochs": 1, "batch_size": 1, "clip_len": 1, "frame_stride": 1, "short_side": 1, "crop_size": 1,
                "workers": 0, "prefetch": 1, "eval_clips": 1, "eval_every": 1, "log_every": 0, "checkpoint_every": 0,
                "stop_after_steps": 0, "seed": 0, "step_epochs": 1, "clips_per_video": 1, "eval_crops": 1,
                "freeze_stages": 0}
_FLOAT_MINIMUM = {"lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0.0, "gamma": 0.0,
                  "clip_grad": 0.0, "backbone_lr_mult": 0.0, "head_lr_mult": 0.0, "dropout": 0.0,
                  "label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0}


def _split_number(text: str) -> int:
    """--split N: an official split, 1-3 (the subset's folder is --subset)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an official split number (1, 2, 3), got {text!r}; the subset "
                                         "to evaluate (a folder such as val) is --subset")
    return int(text)


def _annotation_options(p, what: str) -> None:
    p.add_argument("--annotations", default=None, metavar="PATH",
                   help=f"{what} the videos these annotation files list instead of the folder layout: a UCF101 "
                        "folder (classInd.txt, trainlist0N.txt, testlist0N.txt), an HMDB51 folder "
                        "(<class>_test_splitN.txt), Kinetics CSV (a folder with train.csv and validate.csv, or one "
                        "CSV with a split column) or path lists ('<path> <label>' lines; a folder of lists named "
                        "after their subset); paths relative to the video root (docs/data_preparation.md)")
    p.add_argument("--annotation-format", default="auto", choices=["auto", *FORMATS],
                   help="the format of --annotations (auto: from the files found)")
    p.add_argument("--split", dest="fold", type=_split_number, default=1,
                   help="the official split of --annotations (UCF101, HMDB51: 1-3)")


def _train_parser(sub, common):
    p = sub.add_parser("train", help="train (or resume) a classifier on DIR/{train,val}/{class}/{videos} or the "
                                     "videos annotation files list",
                       parents=[common], formatter_class=_Defaults)
    d = TrainConfig("", "")
    p.add_argument("--data", required=True, help="dataset root: the folder that holds train/ and val/, each with "
                                                  "one sub-folder of videos per class (with --annotations: the "
                                                  "folder their paths are relative to)")
    _annotation_options(p, "train and validate on")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="preprocessing of published weights, as defaults of the options it sets (given options "
                        "win): kinetics-torchvision = torchvision's r2plus1d_18 Kinetics-400 weights' (15 fps, "
                        "frames resized to 128x171, crop 112, 16 frames, 5 clips per video)")
    p.add_argument("--resize", type=_number(int, 1, "integer"), nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                   help="resize frames to exactly this size instead of --short-side")
    p.add_argument("--fps", type=_number(float, 0.01, "number"), default=None,
                   help="resample every video to this frame rate (default: take its frames as they are)")
    p.add_argument("--scale-jitter", type=_number(int, 1, "integer"), nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="training: a random short side in [LOW, HIGH] per clip before the crop (default: "
                        "--short-side)")
    p.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adamw"],
                   help="SGD with momentum, or AdamW (then --lr around 1e-4 to 1e-3 and --weight-decay 0.05 are "
                        "usual)")
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
    p.add_argument("--milestones", type=_number(int, 1, "integer"), nargs="+", default=None, metavar="EPOCH",
                   help="--schedule step: multiply the learning rate by --gamma at these epochs (instead of every "
                        "--step-epochs; torchvision's Kinetics recipe: 20 30 40)")
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
                   help="fine-tune: start from these weights, a torchvision r2plus1d_* state_dict (e.g. Kinetics-400: "
                        "use --preset kinetics-torchvision with it) or a checkpoint (or best.pt) of r2p1d train; the "
                        "classifier is replaced when the class count differs")
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
    _annotation_options(p, "prepare only")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars (shown by default)")


def _run_prepare(args) -> int:
    from ..data.prepare import listed_videos, prepare
    try:  # a wrong path or setting, a busy folder: one line (run_command)
        only = None
        if args.annotations:
            only = listed_videos(args.annotations, args.src, args.fold, args.annotation_format)
        s = prepare(args.src, args.dst, args.short_side, args.fps, args.workers, args.progress,
                    args.keyframe_interval, args.crf, only)
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
    ev = sub.add_parser("eval", help="evaluate a checkpoint (or torchvision weights); prints and writes the metrics",
                        parents=[common], formatter_class=defaults)
    ev.add_argument("--data", required=True, help="dataset root: the folder that holds the subset's folder (with "
                                                   "--annotations: the folder their paths are relative to)")
    tools.model_options(ev)
    ev.add_argument("--subset", default="val", help="the subset: a folder under --data (val, test, ...), or with "
                                                    "annotations train, val or test")
    _annotation_options(ev, "evaluate on")
    ev.set_defaults(annotation_format=None, fold=None)  # default: the run's
    ev.add_argument("--eval-crops", type=_number(int, 1, "integer"), default=None,
                    help="spatial crops per clip, 1 or 3 (default: the checkpoint's training setting)")
    ev.add_argument("--batch-size", type=_number(int, 1, "integer"), default=8, help="clips per batch")
    ev.add_argument("--workers", type=_number(int, 0, "integer"), default=2, help="DataLoader worker processes")
    ev.add_argument("--eval-clips", type=_number(int, 1, "integer"), default=None,
                    help="clips per video (default: the checkpoint's training setting)")
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    ev.add_argument("--out", default=None, help="JSON path (default: eval_<subset>.json beside the checkpoint)")
    _predict_parser(sub, common)
    tools.add_parsers(sub, common)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        # The preset's values become the defaults of the options it sets; options given win.
        train_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
        values = preset(args.preset)
        train_parser.set_defaults(**{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
        args = parser.parse_args(argv)
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
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields}
        result = train(TrainConfig(**values))
        return 3 if result.get("interrupted") else 0
    return _run_eval(args)


def _run_eval(args) -> int:
    from .evaluation import evaluate_model
    from .reports import per_class, worst_classes
    loaded = tools.load_from_args(args)
    name = args.checkpoint or args.weights
    metrics = evaluate_model(loaded, args.data, args.subset, args.batch_size, args.workers, args.eval_clips,
                             args.device, True, args.eval_crops, args.annotations, args.fold, args.annotation_format,
                             name)
    metrics["per_class"] = per_class(metrics["confusion"], metrics["classes"])
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(name)), f"eval_{args.subset}.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    big = shows_top5(len(metrics["classes"]))
    top5 = f"top-5 {metrics['val_top5']:.4f}  " if big else ""
    video5 = f"video top-5 {metrics['val_video_top5']:.4f}  " if big else ""
    missing = f", {metrics['missing_videos']} listed but missing" if metrics["missing_videos"] else ""
    epoch = f"epoch {metrics['epoch']}, " if metrics["epoch"] is not None else ""
    print(f"{args.subset}: clip top-1 {metrics['val_top1']:.4f}  {top5}"
          f"video top-1 {metrics['val_video_top1']:.4f}  {video5}mean class {metrics['val_mean_class_acc']:.4f}  "
          f"loss {metrics['val_loss']:.4f}  ({metrics['val_videos']} videos x {metrics['clips_per_video']} clips x "
          f"{metrics['crops']} crops; {epoch}{plural(metrics['skipped_videos'], 'video')} skipped{missing}) -> {out}")
    print(f"lowest class accuracy: {worst_classes(metrics['per_class'])}")
    return 0
