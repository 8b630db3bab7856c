"""``r2p1d bench``: the fused block against the unfused eager block (contiguous,
channels_last_3d, and with its spatial conv as a 2-D conv over the frames), optionally the
eager block under torch.compile, and nn.Conv3d of the same in/out channels, on the
R(2+1)D-18 stage shapes; with ``network``, a whole R(2+1)D against our network of unfused
blocks or torchvision's own model (network_bench.py).

Every ratio is measured in one process on the same inputs: the median of ``repeats`` timed
runs after ``warmup`` runs (CUDA events on a GPU); the peak memory of a training step (on
the CPU in a fresh process per implementation, from the resident high-water mark; on a GPU
torch.cuda.max_memory_allocated). The repository's bench/bench_block.py and
bench/bench_network.py call the same functions (``run_block``, ``run_network``).
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .. import reference
from ..fuse import fuse
from ..measure import saved_activation_bytes
from ..models import ARCHS
from . import network_bench
from .timing import (add_run_options, as_speed, commit, compile_static, configure, device_name, eval_step, geomean,
                     peak_in_child, progress, pyplot, resident_growth_mb, save, save_figure, slow_kernels, timer,
                     train_step)

STAGES = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")
EAGER = ("eager", "eager_cl", "eager_2d")  # the eager baselines; "vs eager" is against the best of them
_CHILD = network_bench.CHILD  # `python -m` this module: one peak-memory measurement


# ------------------------------------------------------------------ options
def add_compile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="also time the eager block (and the torchvision network of --baseline torchvision) "
                        "under torch.compile")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (the block: max-autotune on CUDA, default on the CPU; the network: default)")


def add_block_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", default=",".join(STAGES), help="R(2+1)D-18 stages to time, comma-separated")
    add_compile_options(p)
    p.add_argument("--no-channels-last", action="store_true",
                   help="skip the channels_last_3d eager baselines (eager_cl, eager_2d)")


def add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="r2plus1d_18", choices=sorted(ARCHS), help="the network")
    p.add_argument("--baseline", default="ours", choices=["ours", "torchvision"],
                   help="what the fused network is compared with: our network of unfused reference blocks, or "
                        "torchvision.models.video.<arch> itself, fused with fuse() for the fused row "
                        "(r2p1d_ext/tools/network_bench.py; default ours)")
    p.add_argument("--amp", default=None, choices=["bfloat16", "float16"],
                   help="run the network's steps under torch.autocast in this dtype (float32 weights)")
    p.add_argument("--no-engines", dest="engines", action="store_false",
                   help="skip the ONNX Runtime and OpenVINO inference rows, which CPU float32 runs time by default "
                        "when those packages are installed")


def add_options(p: argparse.ArgumentParser) -> None:
    """The ``r2p1d bench`` options: the run's, the block's and the network's."""
    add_run_options(p, warmup="default 2 on CPU, 10 on CUDA (network: 1 and 5)",
                    repeats="default 9 on CPU, 50 on CUDA (network: 5 and 20)")
    add_block_options(p)
    p.add_argument("--network", action="store_true", help="also time a whole network (--arch)")
    p.add_argument("--network-only", action="store_true", help="time the whole network, not the blocks")
    add_network_options(p)
    p.add_argument("--out", default=None, help="write the results as JSON here (and a PNG chart beside it); a "
                                               "network run adds -network to the name")


# ------------------------------------------------------------------ the block
def stage_shapes(batch: int, clip_len: int, crop: int):
    """(name, channels, input shape) of the R(2+1)D-18 conv2_x..conv5_x 3x3x3 blocks."""
    out = []
    for i in range(4):
        c, t, s = 64 * 2 ** i, max(1, clip_len // 2 ** i), crop // 2 // 2 ** i
        out.append((f"conv{i + 2}_x", c, (batch, c, t, s, s)))
    return out


def block_flops(block, shape) -> float:
    n, c, t, h, w = shape
    m, o, (kt, kh, kw) = block.mid_channels, block.out_channels, block.kernel_size
    return 2 * n * t * h * w * (m * c * kh * kw + o * m * kt)  # stride 1, 'same' padding


class FramesConv2dBlock(nn.Module):
    """The eager block with its (1,k,k) conv run as nn.functional.conv2d over the N*T frames:
    on a channels_last_3d input that is a zero-copy view (N, C, T, H, W) -> (N*T, C, H, W) in
    channels_last, and back. What a careful user writes by hand; it shares `ref`'s
    parameters and BatchNorm buffers."""

    def __init__(self, ref: nn.Module):
        super().__init__()
        self.ref = ref

    def forward(self, x):
        n, c, t, h, w = x.shape
        conv = self.ref.spatial_conv
        frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        y = F.conv2d(frames, conv.weight.squeeze(2), conv.bias, conv.stride[1:], conv.padding[1:])
        y = y.reshape(n, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.ref.temporal_conv(self.ref.relu(self.ref.bn(y)))


def build_impls(c, dev, dtype, compile_=False, channels_last=True, shape=None, compile_mode=None):
    """The modules compared, seeded identically: {name: (module, input)}. On CUDA the fused
    block takes channels_last_3d input, its kernels' layout (as in the networks). The eager
    baselines: `eager` (contiguous), and with `channels_last` `eager_cl` (channels_last_3d)
    and `eager_2d` (its spatial conv as a 2-D conv over the frames, FramesConv2dBlock)."""
    torch.manual_seed(0)
    ref = reference.SpatioTemporalConv(c, c, 3, padding=1, bias=False)
    fused = fuse(ref)
    conv = nn.Conv3d(c, c, 3, padding=1, bias=False)
    ref, fused, conv = (m.to(device=dev, dtype=dtype) for m in (ref, fused, conv))
    x = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
    x_cl = x.detach().to(memory_format=torch.channels_last_3d).requires_grad_()
    impls = {"fused": (fused, x_cl if dev == "cuda" else x), "eager": (ref, x), "conv3d": (conv, x)}
    if channels_last:
        impls["eager_cl"] = (ref, x_cl)
        impls["eager_2d"] = (FramesConv2dBlock(ref), x_cl)
    if compile_:
        mode = compile_mode or ("max-autotune" if dev == "cuda" else "default")
        impls["compiled"] = (compile_static(ref, mode), x_cl if dev == "cuda" else x)
    return impls


def _command(argv) -> str:
    return " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or []))


def run_block(args, argv=None) -> Dict[str, Any]:
    """Times every block implementation per stage (train step and inference), prints the
    table; returns the result (written to ``args.out`` when set)."""
    dev = args.device
    on_gpu = configure(args, warmup=(2, 10), repeats=(9, 50))
    batch, clip_len, warmup, repeats = args.batch, args.clip_len, args.warmup, args.repeats
    dtype = getattr(torch, args.dtype)
    run = timer(dev, warmup, repeats)
    wanted = set(args.stages.split(","))
    unknown = wanted - set(STAGES)
    if unknown:
        raise ValueError(f"expected --stages from {', '.join(STAGES)}, got {', '.join(sorted(unknown))}")
    shapes = [s for s in stage_shapes(batch, clip_len, args.crop) if s[0] in wanted]
    rows = []
    for name, c, shape in progress(shapes, "shapes"):
        impls = build_impls(c, dev, dtype, args.compile, not args.no_channels_last, shape, args.compile_mode)
        fused, x = impls["fused"]
        ref = impls["eager"][0]
        row = {"stage": name, "shape": list(shape), "channels": c, "mid_channels": fused.mid_channels,
               "gflop_fwd": block_flops(fused, shape) / 1e9}
        for impl, (module, inp) in impls.items():
            module.train()
            row[f"{impl}_train_ms"] = 1e3 * run(train_step(module, inp), compiled=impl == "compiled")
            module.eval()
            row[f"{impl}_eval_ms"] = 1e3 * run(eval_step(module, inp), compiled=impl == "compiled")
            if on_gpu and not args.no_memory:
                torch.cuda.reset_peak_memory_stats()
                module.train()
                train_step(module, inp)()
                row[f"{impl}_train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            elif not args.no_memory and impl != "compiled":
                row[f"{impl}_train_peak_mb"] = peak_in_child(_CHILD, "block", impl, c, ",".join(map(str, shape)),
                                                             args.dtype)
        fused.train(); ref.train()
        row["fused_saved_mb"] = saved_activation_bytes(lambda: fused(x), fused.parameters())[0] / 2**20
        row["eager_saved_mb"] = saved_activation_bytes(lambda: ref(x), ref.parameters())[0] / 2**20
        best_eager = lambda mode: min(row[f"{i}_{mode}_ms"] for i in EAGER if f"{i}_{mode}_ms" in row)  # noqa: E731
        for impl, (module, inp) in impls.items():  # a baseline on ATen's fallback convolution is named
            found = [] if impl == "fused" else slow_kernels(train_step(module.train(), inp))
            if found:
                row.setdefault("slow_paths", {})[impl] = found
        row["train_vs_eager"] = best_eager("train") / row["fused_train_ms"]
        row["eval_vs_eager"] = best_eager("eval") / row["fused_eval_ms"]
        row["train_vs_conv3d"] = row["conv3d_train_ms"] / row["fused_train_ms"]
        row["fused_train_tflops"] = 3 * row["gflop_fwd"] / row["fused_train_ms"]
        row["fused_eval_tflops"] = row["gflop_fwd"] / row["fused_eval_ms"]
        if "compiled_train_ms" in row:
            row["train_vs_compile"] = row["compiled_train_ms"] / row["fused_train_ms"]
        rows.append(row)

    geo = lambda key: geomean(r[key] for r in rows)  # noqa: E731
    speedup = {"block_train_vs_eager": geo("train_vs_eager"), "block_eval_vs_eager": geo("eval_vs_eager"),
               "block_train_vs_conv3d": geo("train_vs_conv3d")}
    if args.compile:
        speedup["block_train_vs_compile"] = geo("train_vs_compile")
    result = {
        "device": device_name(dev), "torch": torch.__version__, "dtype": args.dtype,
        "tf32": bool(args.tf32 and on_gpu and dtype == torch.float32),
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        # The CPU kernels' bfloat16 path (AMX, AVX512-BF16 or float32; R2P1D_CPU_KERNELS).
        "cpu_bf16_path": None if on_gpu else torch.ops.r2p1d.cpu_bf16_path(),
        "commit": commit(), "date": datetime.date.today().isoformat(), "command": _command(argv),
        "batch": batch, "clip_len": clip_len, "warmup": warmup, "repeats": repeats,
        "saved_bytes_ratio": statistics.fmean(r["fused_saved_mb"] / r["eager_saved_mb"] for r in rows),
        "speedup": speedup, "rows": rows,
    }
    return _report(result, args.out, print_block_table, plot_block)


_SPEEDUP_NAMES = {"block_train_vs_eager": "train vs eager", "block_train_vs_compile": "train vs torch.compile",
                  "block_eval_vs_eager": "eval vs eager", "block_train_vs_conv3d": "train vs nn.Conv3d"}


def print_block_table(result) -> None:
    impls = [k[:-9] for k in result["rows"][0] if k.endswith("_train_ms")]
    path = result.get("cpu_bf16_path")
    kernels = f" ({path} kernels)" if path and result["dtype"] == "bfloat16" else ""
    print(f"\n{result['device']} | torch {result['torch']} | {result['dtype']}{kernels} | commit {result['commit']}")
    head = f"{'stage':8} {'mode':5} " + " ".join(f"{i + ' ms':>12}" for i in impls) + f" {'eager/fused':>12} {'TFLOP/s':>8}"
    print(head)
    for r in result["rows"]:
        for mode in ("train", "eval"):
            times = " ".join(f"{r[f'{i}_{mode}_ms']:12.2f}" for i in impls)
            print(f"{r['stage']:8} {mode:5} {times} {r[f'{mode}_vs_eager']:11.2f}x {r[f'fused_{mode}_tflops']:8.3f}")
    print("saved for backward (fused / eager): " + ", ".join(
        f"{r['stage']} {r['fused_saved_mb']:.1f}/{r['eager_saved_mb']:.1f} MB" for r in result["rows"]))
    if "fused_train_peak_mb" in result["rows"][0]:
        names = [i for i in impls if f"{i}_train_peak_mb" in result["rows"][0]]
        print(f"peak memory of a training step, MB ({' / '.join(names)}): " + ", ".join(
            f"{r['stage']} " + "/".join(f"{r[f'{i}_train_peak_mb']:.0f}" for i in names)
            for r in result["rows"]))
    for r in result["rows"]:
        for impl, names in r.get("slow_paths", {}).items():
            print(f"WARNING: {r['stage']} {impl} ran PyTorch's slow convolution path: {', '.join(names)}")
    print("geometric means over the stages, fused against each baseline: " + ", ".join(
        f"{_SPEEDUP_NAMES.get(k, k)} {as_speed(v)}" for k, v in result["speedup"].items()))


def plot_block(result, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    impls = [k[:-9] for k in result["rows"][0] if k.endswith("_train_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    stages = [r["stage"] for r in result["rows"]]
    width = 0.8 / len(impls)
    for ax, mode in zip(axes, ("train", "eval")):
        for k, impl in enumerate(impls):
            vals = [r[f"{impl}_{mode}_ms"] for r in result["rows"]]
            ax.bar([i + k * width for i in range(len(stages))], vals, width, label=impl)
        ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(stages))], stages)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{mode}: {'forward+backward' if mode == 'train' else 'forward, no grad'}")
        ax.legend(fontsize=8)
    save_figure(fig, f"(2+1)D block, {result['device']}, torch {result['torch']}, "
                     f"{result['dtype']}, batch {result['batch']}", path)


# ------------------------------------------------------------------ the network
def run_network(args, argv=None) -> Dict[str, Any]:
    """Times a training step and inference of the whole network per implementation against
    the baseline of ``args.baseline`` (r2p1d_ext/tools/network_bench.py), prints the table;
    returns the result (written to ``args.out`` when set). With ``args.compile`` the
    torchvision baseline is also timed under torch.compile."""
    result = network_bench.run_network(args, _command(argv))
    return _report(result, args.out, network_bench.print_table, network_bench.plot)


def _report(result, out: Optional[str], table, chart) -> Dict[str, Any]:
    """Prints the table; with `out`, writes the JSON there and the chart beside it (.png)."""
    table(result)
    if out:
        save(result, out)
        chart(result, (out[:-5] if out.endswith(".json") else out) + ".png")
    return result


def run_from_args(args, argv=None) -> int:
    """``r2p1d bench``: the blocks, and with --network (or --network-only) the network."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this torch")
    out = args.out
    given = {k: getattr(args, k) for k in ("batch", "clip_len", "warmup", "repeats")}
    if not args.network_only:
        run_block(args, argv)
    if args.network or args.network_only:
        for key, value in given.items():  # what the user gave, else the network's own defaults
            setattr(args, key, value)
        if out:
            args.out = (out[:-5] if out.endswith(".json") else out) + "-network.json"
        run_network(args, argv)
    return 0


def _peak_child(argv: List[str]) -> None:
    """In a fresh process: the resident growth of one training step, in MB, printed."""
    if argv[0] != "block":
        network_bench.peak_child(argv[1:])
        return
    impl, c, shape, dtype = argv[1:5]
    module, x = build_impls(int(c), "cpu", getattr(torch, dtype), shape=tuple(int(v) for v in shape.split(",")))[impl]
    module.train()
    print(resident_growth_mb(train_step(module, x)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak-child"]:
        _peak_child(sys.argv[2:])
