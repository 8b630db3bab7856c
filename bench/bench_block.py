#!/usr/bin/env python3
"""Block benchmark: the fused SpatioTemporalConv against the unfused eager block (contiguous
and channels_last_3d), optionally the eager block under torch.compile, and nn.Conv3d of the
same in/out channels (same parameter count), on the R(2+1)D-18 stage shapes.

Every ratio is measured in one process on the same inputs: median of --repeats timed runs
after --warmup runs (CUDA events on a GPU). Prints a table and writes
bench/results/<date>-<device>.json (and a PNG chart when matplotlib is installed).

    python bench/bench_block.py                      # CPU, float32, batch 4, 8x112 clips
    python bench/bench_block.py --device cuda --dtype bfloat16 --batch 16 --clip-len 16 --compile
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import shlex
import statistics
import sys

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import r2p1d_ext  # noqa: E402
from common import (RESULTS, add_run_options, commit, configure, device_name, eval_step,  # noqa: E402
                    peak_in_child, pyplot, resident_growth_mb, save, save_figure, timer, train_step)
from r2p1d_ext import reference  # noqa: E402
from r2p1d_ext.measure import saved_activation_bytes  # noqa: E402


def stage_shapes(batch, clip_len, crop):
    """(name, channels, input shape) of the R(2+1)D-18 conv2_x..conv5_x 3x3x3 blocks."""
    out = []
    for i in range(4):
        c, t, s = 64 * 2 ** i, max(1, clip_len // 2 ** i), crop // 2 // 2 ** i
        out.append((f"conv{i + 2}_x", c, (batch, c, t, s, s)))
    return out


def block_flops(block, shape):
    n, c, t, h, w = shape
    m, o, (kt, kh, kw) = block.mid_channels, block.out_channels, block.kernel_size
    return 2 * n * t * h * w * (m * c * kh * kw + o * m * kt)  # stride 1, 'same' padding


def build_impls(c, dev, dtype, compile_=False, channels_last=True, shape=None, compile_mode=None):
    """The modules compared, seeded identically: {name: (module, input)}. On CUDA the fused
    block takes channels_last_3d input, its kernels' layout (as in the networks)."""
    torch.manual_seed(0)
    ref = reference.SpatioTemporalConv(c, c, 3, padding=1, bias=False)
    fused = r2p1d_ext.fuse(ref)
    conv = nn.Conv3d(c, c, 3, padding=1, bias=False)
    ref, fused, conv = (m.to(device=dev, dtype=dtype) for m in (ref, fused, conv))
    x = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
    x_cl = x.detach().to(memory_format=torch.channels_last_3d).requires_grad_()
    impls = {"fused": (fused, x_cl if dev == "cuda" else x), "eager": (ref, x), "conv3d": (conv, x)}
    if channels_last:
        impls["eager_cl"] = (ref, x_cl)
    if compile_:
        mode = compile_mode or ("max-autotune" if dev == "cuda" else "default")
        impls["compiled"] = (torch.compile(ref, mode=mode), x_cl if dev == "cuda" else x)
    return impls


def peak_child(impl, c, shape, dtype):
    """In a fresh process: the resident growth of one training step, in MB, printed."""
    module, x = build_impls(c, "cpu", getattr(torch, dtype), shape=shape)[impl]
    module.train()
    print(resident_growth_mb(train_step(module, x)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peak-child":  # internal: one peak-memory measurement
        impl, c, shape, dtype = argv[1:5]
        return peak_child(impl, int(c), tuple(int(v) for v in shape.split(",")), dtype)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, warmup="default 2 on CPU, 10 on CUDA", repeats="default 9 on CPU, 50 on CUDA")
    p.add_argument("--stages", default="conv2_x,conv3_x,conv4_x,conv5_x")
    p.add_argument("--compile", action="store_true", help="also time the eager block under torch.compile")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: max-autotune on CUDA, default on the CPU)")
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels_last_3d eager baseline")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-<device>.json)")
    args = p.parse_args(argv)

    dev = args.device
    on_gpu = configure(args, warmup=(2, 10), repeats=(9, 50))
    batch, clip_len, warmup, repeats = args.batch, args.clip_len, args.warmup, args.repeats
    dtype = getattr(torch, args.dtype)
    run = timer(dev, warmup, repeats)
    wanted = set(args.stages.split(","))
    shapes = [s for s in stage_shapes(batch, clip_len, args.crop) if s[0] in wanted]

    rows = []
    for name, c, shape in tqdm(shapes, desc="shapes", unit="shape"):
        impls = build_impls(c, dev, dtype, args.compile, not args.no_channels_last, shape, args.compile_mode)
        fused, x = impls["fused"]
        ref = impls["eager"][0]
        row = {"stage": name, "shape": list(shape), "channels": c, "mid_channels": fused.mid_channels,
               "gflop_fwd": block_flops(fused, shape) / 1e9}
        for impl, (module, inp) in impls.items():
            module.train()
            row[f"{impl}_train_ms"] = 1e3 * run(train_step(module, inp))
            module.eval()
            row[f"{impl}_eval_ms"] = 1e3 * run(eval_step(module, inp))
            if on_gpu and not args.no_memory:
                torch.cuda.reset_peak_memory_stats()
                module.train()
                train_step(module, inp)()
                row[f"{impl}_train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            elif not args.no_memory and impl != "compiled":
                row[f"{impl}_train_peak_mb"] = peak_in_child(
                    __file__, impl, c, ",".join(map(str, shape)), args.dtype)
        fused.train(); ref.train()
        row["fused_saved_mb"] = saved_activation_bytes(lambda: fused(x), fused.parameters())[0] / 2**20
        row["eager_saved_mb"] = saved_activation_bytes(lambda: ref(x), ref.parameters())[0] / 2**20
        best_eager = lambda mode: min(row[k] for k in (f"eager_{mode}_ms", f"eager_cl_{mode}_ms") if k in row)
        row["train_vs_eager"] = best_eager("train") / row["fused_train_ms"]
        row["eval_vs_eager"] = best_eager("eval") / row["fused_eval_ms"]
        row["train_vs_conv3d"] = row["conv3d_train_ms"] / row["fused_train_ms"]
        row["fused_train_tflops"] = 3 * row["gflop_fwd"] / row["fused_train_ms"]
        row["fused_eval_tflops"] = row["gflop_fwd"] / row["fused_eval_ms"]
        if "compiled_train_ms" in row:
            row["train_vs_compile"] = row["compiled_train_ms"] / row["fused_train_ms"]
        rows.append(row)

    geo = lambda key: math.exp(statistics.fmean(math.log(r[key]) for r in rows))
    speedup = {"block_train_vs_eager": geo("train_vs_eager"), "block_eval_vs_eager": geo("eval_vs_eager"),
               "block_train_vs_conv3d": geo("train_vs_conv3d")}
    if args.compile:
        speedup["block_train_vs_compile"] = geo("train_vs_compile")
    result = {
        "device": device_name(dev), "torch": torch.__version__, "dtype": args.dtype,
        "tf32": bool(args.tf32 and on_gpu and dtype == torch.float32),
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "commit": commit(), "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv)),
        "batch": batch, "clip_len": clip_len, "warmup": warmup, "repeats": repeats,
        "saved_bytes_ratio": statistics.fmean(r["fused_saved_mb"] / r["eager_saved_mb"] for r in rows),
        "speedup": speedup, "rows": rows,
    }
    print_table(result)
    out = args.out or os.path.join(RESULTS, f"{result['date']}-{'gpu' if on_gpu else 'cpu'}.json")
    save(result, out)
    plot(result, out.replace(".json", ".png"))
    return result


def print_table(result):
    impls = [k[:-9] for k in result["rows"][0] if k.endswith("_train_ms")]
    print(f"\n{result['device']} | torch {result['torch']} | {result['dtype']} | commit {result['commit']}")
    head = f"{'stage':8} {'mode':5} " + " ".join(f"{i + ' ms':>12}" for i in impls) + f" {'vs eager':>9} {'TFLOP/s':>8}"
    print(head)
    for r in result["rows"]:
        for mode in ("train", "eval"):
            times = " ".join(f"{r[f'{i}_{mode}_ms']:12.2f}" for i in impls)
            print(f"{r['stage']:8} {mode:5} {times} {r[f'{mode}_vs_eager']:8.2f}x {r[f'fused_{mode}_tflops']:8.3f}")
    print("saved for backward (fused / eager): " + ", ".join(
        f"{r['stage']} {r['fused_saved_mb']:.1f}/{r['eager_saved_mb']:.1f} MB" for r in result["rows"]))
    if "fused_train_peak_mb" in result["rows"][0]:
        names = [i for i in impls if f"{i}_train_peak_mb" in result["rows"][0]]
        print(f"peak memory of a training step, MB ({' / '.join(names)}): " + ", ".join(
            f"{r['stage']} " + "/".join(f"{r[f'{i}_train_peak_mb']:.0f}" for i in names)
            for r in result["rows"]))
    print("geometric-mean speedups: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup"].items()))


def plot(result, path):
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


if __name__ == "__main__":
    main()
