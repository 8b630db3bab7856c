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
import os
import shlex
import sys

import torch
from torch.nn import functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, add_run_options, commit, configure, device_name, eval_step,  # noqa: E402
                    peak_in_child, pyplot, resident_growth_mb, save, save_figure, timer)
from common import train_step as common_train_step  # noqa: E402
import engines  # noqa: E402
from r2p1d_ext import SpatioTemporalConv, models, reference  # noqa: E402

IMPLS = ("fused", "eager", "eager_cl")
ARCHS = models.ARCHS


def build(impl, arch, device, dtype, shape, classes=400):
    """The network and a clip batch with labels, seeded identically for every impl."""
    torch.manual_seed(0)
    conv = SpatioTemporalConv if impl == "fused" else reference.SpatioTemporalConv
    model = ARCHS[arch](num_classes=classes, conv=conv).to(device=device, dtype=dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    if impl == "eager_cl":
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, classes, (shape[0],), device=device)
    return model, x, labels


def train_step(model, x, labels):
    return common_train_step(model, x, lambda logits: F.cross_entropy(logits, labels))


def engine_rows(model, x, reference_out, run, threads):
    """CPU float32 inference of `model` (the unfused network, eval) exported to ONNX, in ONNX
    Runtime and OpenVINO with `threads` threads, on the same input (bench/engines.py); per
    engine its median time and its output's relative error against `reference_out` (the
    model's own eager output)."""
    rows = {}
    inp = x.numpy()
    for name, (infer, version) in engines.load(model, x, threads).items():
        rows[name] = {"eval_ms": 1e3 * run(lambda: infer(inp)),
                      "rel_err": engines.rel_err(infer(inp), reference_out), "version": version}
    return rows


def peak_child(impl, arch, shape, dtype):
    """In a fresh process: the resident growth of the first training step, in MB, printed."""
    model, x, labels = build(impl, arch, "cpu", getattr(torch, dtype), shape)
    model.train()
    print(resident_growth_mb(train_step(model, x, labels)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peak-child":  # internal: one peak-memory measurement
        impl, arch, shape, dtype = argv[1:5]
        return peak_child(impl, arch, tuple(int(v) for v in shape.split(",")), dtype)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, warmup="default 1 on CPU, 5 on CUDA", repeats="default 5 on CPU, 20 on CUDA")
    p.add_argument("--arch", default="r2plus1d_18", choices=sorted(ARCHS))
    p.add_argument("--out", default=None,
                   help="JSON path (default bench/results/<date>-<device>-network.json)")
    p.add_argument("--no-engines", dest="engines", action="store_false",
                   help="CPU float32: skip the ONNX Runtime and OpenVINO inference rows")
    args = p.parse_args(argv)

    dev = args.device
    on_gpu = configure(args, warmup=(1, 5), repeats=(5, 20))
    warmup, repeats = args.warmup, args.repeats
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, 3, args.clip_len, args.crop, args.crop)
    run = timer(dev, warmup, repeats)

    rows, engine_results = {}, {}
    with_engines = args.engines and not on_gpu and args.dtype == "float32"
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
            row["train_peak_mb"] = peak_in_child(__file__, impl, args.arch, ",".join(map(str, shape)),
                                                 args.dtype)
        rows[impl] = row
        if impl == "eager" and with_engines:
            with torch.no_grad():  # the model as exported (its running statistics moved in the timed steps)
                eager_out = model.eval()(x)
            engine_results = engine_rows(model, x, eager_out, run, torch.get_num_threads())
        del model, x
    rows.update(engine_results)

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
    for engine in ("onnxruntime", "openvino"):
        if engine in rows:
            result[f"eval_vs_{engine}"] = rows[engine]["eval_ms"] / rows["fused"]["eval_ms"]
    print_table(result)
    suffix = "gpu" if on_gpu else "cpu"
    out = args.out or os.path.join(RESULTS, f"{result['date']}-{suffix}-network.json")
    save(result, out)
    plot(result, out.replace(".json", ".png"))
    return result


def print_table(result):
    print(f"\n{result['arch']} {tuple(result['shape'])} | {result['device']} | torch {result['torch']} "
          f"| {result['dtype']} | commit {result['commit']}")
    print(f"{'impl':11} {'train ms':>10} {'eval ms':>10} {'peak MB':>9}")
    for impl, r in result["rows"].items():
        peak = f"{r['train_peak_mb']:9.0f}" if "train_peak_mb" in r else f"{'-':>9}"
        train = f"{r['train_ms']:10.1f}" if "train_ms" in r else f"{'-':>10}"
        print(f"{impl:11} {train} {r['eval_ms']:10.1f} {peak}")
    line = (f"fused vs the better eager: train {result['train_vs_eager']:.2f}x faster, "
            f"eval {result['eval_vs_eager']:.2f}x faster")
    if "peak_vs_eager" in result:
        line += f", peak memory {result['peak_vs_eager']:.2f}x"
    for engine in ("onnxruntime", "openvino"):
        if f"eval_vs_{engine}" in result:
            line += (f"; eval {result[f'eval_vs_{engine}']:.2f}x faster than {engine} "
                     f"(its output within {result['rows'][engine]['rel_err']:.1e})")
    print(line)


def plot(result, path):
    plt = pyplot()
    if plt is None:
        return
    impls = list(result["rows"])
    keys = [k for k in ("train_ms", "eval_ms", "train_peak_mb") if k in result["rows"][impls[0]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        have = [i for i in impls if key in result["rows"][i]]
        ax.bar(have, [result["rows"][i][key] for i in have], color=[f"C{impls.index(i)}" for i in have])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title({"train_ms": "training step (ms)", "eval_ms": "inference (ms)",
                      "train_peak_mb": "peak memory, training (MB)"}[key])
    save_figure(fig, f"{result['arch']} {tuple(result['shape'])}, {result['device']}, "
                     f"torch {result['torch']}, {result['dtype']}", path)


if __name__ == "__main__":
    main()
