#!/usr/bin/env python3
"""Network benchmark: a whole R(2+1)D (torchvision's layout, r2plus1d_18 by default) built
from the fused SpatioTemporalConv against the same network built from the unfused eager
block (contiguous and channels_last_3d), on video clips.

Per implementation: the median time of a training step (forward, cross-entropy, backward)
and of an inference forward, after warm-up, all in one process on the same input; and the
peak memory of the first training step (CPU: in a fresh process per implementation, from
the kernel's resident high-water mark; GPU: torch.cuda.max_memory_allocated). This is the
figure users see: the block benchmark (bench_block.py) measures one block alone, where
kernel scratch memory weighs more than in a network, whose layers share it.

    python bench/bench_network.py                    # CPU, float32, batch 4, 8x112 clips
    python bench/bench_network.py --device cuda --batch 16 --clip-len 16
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys

import torch
from torch.nn import functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_block import RESULTS, _status_kib, commit, device_name, timer  # noqa: E402
from r2p1d_ext import network, reference  # noqa: E402

IMPLS = ("fused", "eager", "eager_cl")
ARCHS = {"r2plus1d_10": network.r2plus1d_10, "r2plus1d_18": network.r2plus1d_18,
         "r2plus1d_34": network.r2plus1d_34}


def build(impl, arch, device, dtype, shape, classes=400):
    """The network and a clip batch with labels, seeded identically for every impl."""
    torch.manual_seed(0)
    conv = network.SpatioTemporalConv if impl == "fused" else reference.SpatioTemporalConv
    model = ARCHS[arch](num_classes=classes, conv=conv).to(device=device, dtype=dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    if impl == "eager_cl":
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, classes, (shape[0],), device=device)
    return model, x, labels


def train_step(model, x, labels):
    def fn():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
    return fn


def eval_step(model, x):
    def fn():
        with torch.no_grad():
            model(x)
    return fn


def peak_child(impl, arch, shape, dtype):
    """In a fresh process: how far the first training step raises the resident set (MB).
    Writing 5 to /proc/self/clear_refs resets the high-water mark VmHWM to VmRSS."""
    model, x, labels = build(impl, arch, "cpu", getattr(torch, dtype), shape)
    model.train()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    train_step(model, x, labels)()
    print((_status_kib("VmHWM") - before) / 1024)


def cpu_peak_mb(impl, arch, shape, dtype):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak-child", impl, arch,
                          ",".join(map(str, shape)), dtype], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peak-child":  # internal: one peak-memory measurement
        impl, arch, shape, dtype = argv[1:5]
        return peak_child(impl, arch, tuple(int(v) for v in shape.split(",")), dtype)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--arch", default="r2plus1d_18", choices=sorted(ARCHS))
    p.add_argument("--batch", type=int, default=None, help="default 4 on CPU, 16 on CUDA")
    p.add_argument("--clip-len", type=int, default=None, help="default 8 on CPU, 16 on CUDA")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--out", default=None,
                   help="JSON path (default bench/results/<date>-<device>-network.json)")
    args = p.parse_args(argv)

    dev = args.device
    on_gpu = dev == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (16 if on_gpu else 4)
    clip_len = args.clip_len or (16 if on_gpu else 8)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    repeats = args.repeats if args.repeats is not None else (20 if on_gpu else 5)
    dtype = getattr(torch, args.dtype)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    shape = (batch, 3, clip_len, args.crop, args.crop)
    run = timer(dev, warmup, repeats)

    rows = {}
    for impl in tqdm(IMPLS, desc="implementations", unit="impl"):
        model, x, labels = build(impl, args.arch, dev, dtype, shape)
        model.train()
        row = {"train_ms": 1e3 * run(train_step(model, x, labels))}
        model.eval()
        row["eval_ms"] = 1e3 * run(eval_step(model, x))
        if on_gpu and not args.no_memory:
            model.train()
            torch.cuda.reset_peak_memory_stats()
            train_step(model, x, labels)()
            row["train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        elif not args.no_memory:
            row["train_peak_mb"] = cpu_peak_mb(impl, args.arch, shape, args.dtype)
        rows[impl] = row
        del model, x

    best = lambda key: min(rows[i][key] for i in IMPLS if i != "fused")
    result = {
        "device": device_name(dev), "torch": torch.__version__, "dtype": args.dtype,
        "commit": commit(), "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv)),
        "arch": args.arch, "shape": list(shape), "warmup": warmup, "repeats": repeats,
        "rows": rows,
        "train_vs_eager": best("train_ms") / rows["fused"]["train_ms"],
        "eval_vs_eager": best("eval_ms") / rows["fused"]["eval_ms"],
    }
    if "train_peak_mb" in rows["fused"]:
        result["peak_vs_eager"] = rows["fused"]["train_peak_mb"] / best("train_peak_mb")
    print_table(result)
    suffix = "gpu" if on_gpu else "cpu"
    out = args.out or os.path.join(RESULTS, f"{result['date']}-{suffix}-network.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    plot(result, out.replace(".json", ".png"))
    return result


def print_table(result):
    print(f"\n{result['arch']} {tuple(result['shape'])} | {result['device']} | torch {result['torch']} "
          f"| {result['dtype']} | commit {result['commit']}")
    print(f"{'impl':9} {'train ms':>10} {'eval ms':>10} {'peak MB':>9}")
    for impl, r in result["rows"].items():
        peak = f"{r['train_peak_mb']:9.0f}" if "train_peak_mb" in r else f"{'-':>9}"
        print(f"{impl:9} {r['train_ms']:10.1f} {r['eval_ms']:10.1f} {peak}")
    line = (f"fused vs the better eager: train {result['train_vs_eager']:.2f}x faster, "
            f"eval {result['eval_vs_eager']:.2f}x faster")
    if "peak_vs_eager" in result:
        line += f", peak memory {result['peak_vs_eager']:.2f}x"
    print(line)


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    impls = list(result["rows"])
    keys = [k for k in ("train_ms", "eval_ms", "train_peak_mb") if k in result["rows"][impls[0]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        ax.bar(impls, [result["rows"][i][key] for i in impls], color=["C0", "C1", "C2"])
        ax.set_title({"train_ms": "training step (ms)", "eval_ms": "inference (ms)",
                      "train_peak_mb": "peak memory, training (MB)"}[key])
    fig.suptitle(f"{result['arch']} {tuple(result['shape'])}, {result['device']}, "
                 f"torch {result['torch']}, {result['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
