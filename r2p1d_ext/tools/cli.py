"""The ``r2p1d`` sub-commands that need no ``[train]`` extra: check, bench, export. Each is a
thin caller of a documented function (r2p1d_ext/tools/check.py, bench.py, export.py); the
full command (r2p1d_ext/train/cli.py) adds these parsers beside its own."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .._cli_common import Defaults, number, run_command
from ..models import ARCHS

COMMANDS = ("check", "bench", "export")


def add_parsers(sub, common) -> None:
    ck = sub.add_parser("check", help="verify this build: gradcheck, opcheck and the module against the reference, "
                                      "per device and kernel family", parents=[common], formatter_class=Defaults)
    ck.add_argument("--device", default="all", choices=["cpu", "cuda", "all"],
                    help="where to check (all: the CPU, and CUDA when a GPU is visible)")
    ck.add_argument("--quick", action="store_true", help="fewer block shapes (under 30 s on a 2-core CPU)")
    ck.add_argument("--json", default=None, metavar="FILE", help="also write the facts and every row as JSON")

    ex = sub.add_parser("export", help="export a trained model to ONNX or a torch.export program (.pt2)",
                        parents=[common], formatter_class=Defaults)
    model_options(ex)
    ex.add_argument("--format", default="onnx", choices=["onnx", "pt2"], help="ONNX (standard operators) or torch.export")
    ex.add_argument("--out", required=True, help="the file to write (the labels go beside it: <out>.labels.txt)")
    ex.add_argument("--batch", default="dynamic", help="'dynamic' (1 to 256) or a fixed batch size")
    ex.add_argument("--clip-len", type=number(int, 1, "integer"), default=None,
                    help="frames per clip (default: the model's)")
    ex.add_argument("--check", action="store_true",
                    help="run the exported file once (ONNX Runtime, if installed) and print its max error against PyTorch")

    from .bench import add_options
    be = sub.add_parser("bench", help="the fused block (and network) against eager PyTorch: times, ratios, memory",
                        parents=[common], formatter_class=Defaults)
    add_options(be)


def model_options(p) -> None:
    """Which trained model: a checkpoint of r2p1d train, or a torchvision-layout state_dict."""
    p.add_argument("--checkpoint", default=None, help="a checkpoint.pt written by r2p1d train")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="instead of --checkpoint: a torchvision r2plus1d_* state_dict (needs --arch and --labels)")
    p.add_argument("--arch", default=None, choices=sorted(ARCHS), help="the network of --weights")
    p.add_argument("--labels", default=None, metavar="FILE", help="class names of --weights, one per line")


def load_from_args(args):
    """The model of --checkpoint or --weights/--arch/--labels (models.load_model)."""
    from ..models.loading import load_model, read_labels
    if (args.checkpoint is None) == (args.weights is None):
        raise ValueError("give a trained model: --checkpoint FILE (from r2p1d train), or --weights FILE with --arch "
                         "and --labels")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"no such weights file: {args.weights}")
    labels = read_labels(args.labels) if args.labels else None
    return load_model(args.checkpoint or args.weights, arch=args.arch, labels=labels)


def run(args) -> int:
    if args.command == "check":
        return _check(args)
    if args.command == "export":
        return _export(args)
    from .bench import run_from_args
    return run_from_args(args)


def _check(args) -> int:
    from .check import build_facts, format_rows, run_checks
    facts = build_facts()
    for key, value in facts.items():
        print(f"{key + ':':22} {value}")
    print(flush=True)
    rows = run_checks(args.device, args.quick, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_rows(rows))
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"facts": facts, "rows": [r.__dict__ for r in rows]}, f, indent=2)
    return 1 if failed else 0


def _export(args) -> int:
    from .export import export_model
    batch = args.batch
    if batch != "dynamic":
        try:
            batch = int(batch)
        except ValueError:
            raise ValueError(f"expected --batch dynamic or a positive integer, got {args.batch!r}")
    info = export_model(load_from_args(args), args.out, args.format, batch, args.clip_len, args.check)
    print(f"wrote {info['path']} ({info['format']}, input {tuple(info['input'])}, {info['classes']} classes; labels "
          f"in {info['labels']})")
    if args.check:
        if info["checked_with"] is None:
            print("not checked: ONNX Runtime is not installed (pip install onnxruntime)")
        else:
            print(f"checked with {info['checked_with']}: max abs error {info['max_abs_error']:.2e} "
                  f"(logits up to {info['max_abs_logit']:.2f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of these sub-commands alone (an install without the [train] extra)."""
    parser = argparse.ArgumentParser(prog="r2p1d", description="R(2+1)D on fused kernels: check, bench and export "
                                     "(train, eval, predict, prepare need pip install 'r2p1d_ext[train]')")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, show the whole traceback (default: one line saying what to fix)")
    add_parsers(parser.add_subparsers(dest="command", required=True), common)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, lambda: run(args))
