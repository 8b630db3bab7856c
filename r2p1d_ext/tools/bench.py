"""``r2p1d bench``: the fused block against the unfused eager block (contiguous and
channels_last_3d), optionally the eager block under torch.compile, and nn.Conv3d of the
same in/out channels, on the R(2+1)D-18 stage shapes; with ``network``, a whole R(2+1)D
(torchvision's layout) built from each block (and, on the CPU in float32, the eager network
in ONNX Runtime and OpenVINO when they are installed).

Every ratio is measured in one process on the same inputs: the median of ``repeats`` timed
runs after ``warmup`` runs (CUDA events on a GPU); the peak memory of a training step (on
the CPU in a fresh process per implementation, from the resident high-water mark; on a GPU
torch.cuda.max_memory_allocated). The repository's bench/bench_block.py and
bench/bench_network.py call the same functions (``run_block``, ``run_network``).
"""
from __future__ import annotations

import argparse
import datetime
import math
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
from ..module import SpatioTemporalConv
from .timing import (add_run_options, commit, configure, device_name, eval_step, peak_in_child, pyplot,
                     resident_growth_mb, save, save_figure, timer, train_step)

STAGES = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")
NET_IMPLS = ("fused", "eager", "eager_cl")
_CHILD = "r2p1d_ext.tools.bench"  # `python -m` this module: one peak-memory measurement


def _progress(iterable, desc):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is the [train] extra's; the kernels-only install runs without bars
        return iterable
    return tqdm(iterable, desc=desc, unit=desc.rstrip("s"))


# ------------------------------------------------------------------ options
def add_block_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", default=",".join(STAGES), help="R(2+1)D-18 stages to time, comma-separated")
    p.add_argument("--compile", action="store_true", help="also time the eager block under torch.compile")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: max-autotune on CUDA, default on the CPU)")
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels_last_3d eager baseline")


def add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="r2plus1d_18", choices=sorted(ARCHS), help="the network")
    p.add_argument("--no-engines", dest="engines", action="store_false",
                   help="CPU float32: skip the ONNX Runtime and OpenVINO inference rows")


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


def build_impls(c, dev, dtype, compile_=False, channels_last=True, shape=None, compile_mode=None):
    """The modules compared, seeded identically: {name: (module, input)}. On CUDA the fused
    block takes channels_last_3d input, its kernels' layout (as in the networks)."""
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
    if compile_:
        mode = compile_mode or ("max-autotune" if dev == "cuda" else "default")
        impls["compiled"] = (torch.compile(ref, mode=mode), x_cl if dev == "cuda" else x)
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
    for name, c, shape in _progress(shapes, "shapes"):
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
                row[f"{impl}_train_peak_mb"] = peak_in_child(_CHILD, "block", impl, c, ",".join(map(str, shape)),
                                                             args.dtype)
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
        "commit": commit(), "date": datetime.date.today().isoformat(), "command": _command(argv),
        "batch": batch, "clip_len": clip_len, "warmup": warmup, "repeats": repeats,
        "saved_bytes_ratio": statistics.fmean(r["fused_saved_mb"] / r["eager_saved_mb"] for r in rows),
        "speedup": speedup, "rows": rows,
    }
    return _report(result, args.out, print_block_table, plot_block)


def print_block_table(result) -> None:
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
def build_network(impl, arch, device, dtype, shape, classes=400):
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


def network_train_step(model, x, labels):
    return train_step(model, x, lambda logits: F.cross_entropy(logits, labels))


def engine_rows(model, x, reference_out, run, threads):
    """CPU float32 inference of `model` (the unfused network, eval) exported to ONNX, in ONNX
    Runtime and OpenVINO with `threads` threads, on the same input (r2p1d_ext/tools/engines.py);
    per engine its median time and its output's relative error against `reference_out` (the
    model's own eager output)."""
    from . import engines
    rows = {}
    inp = x.numpy()
    for name, (infer, version) in engines.load(model, x, threads).items():
        rows[name] = {"eval_ms": 1e3 * run(lambda: infer(inp)),
                      "rel_err": engines.rel_err(infer(inp), reference_out), "version": version}
    return rows


def run_network(args, argv=None) -> Dict[str, Any]:
    """Times a training step and inference of the whole network per implementation, prints
    the table; returns the result (written to ``args.out`` when set)."""
    dev = args.device
    on_gpu = configure(args, warmup=(1, 5), repeats=(5, 20))
    warmup, repeats = args.warmup, args.repeats
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, 3, args.clip_len, args.crop, args.crop)
    run = timer(dev, warmup, repeats)
    rows: Dict[str, Any] = {}
    engine_results: Dict[str, Any] = {}
    with_engines = args.engines and not on_gpu and args.dtype == "float32"
    for impl in _progress(NET_IMPLS, "implementations"):
        model, x, labels = build_network(impl, args.arch, dev, dtype, shape)
        model.train()
        row = {"train_ms": 1e3 * run(network_train_step(model, x, labels))}
        model.eval()
        row["eval_ms"] = 1e3 * run(eval_step(model, x))
        if on_gpu and not args.no_memory:
            model.train()
            torch.cuda.reset_peak_memory_stats()
            network_train_step(model, x, labels)()
            row["train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        elif not args.no_memory:
            row["train_peak_mb"] = peak_in_child(_CHILD, "network", impl, args.arch, ",".join(map(str, shape)),
                                                 args.dtype)
        rows[impl] = row
        if impl == "eager" and with_engines:
            with torch.no_grad():  # the model as exported (its running statistics moved in the timed steps)
                eager_out = model.eval()(x)
            engine_results = engine_rows(model, x, eager_out, run, torch.get_num_threads())
        del model, x
    rows.update(engine_results)

    best = lambda key: min(rows[i][key] for i in NET_IMPLS if i != "fused")
    result = {
        "device": device_name(dev), "torch": torch.__version__, "dtype": args.dtype,
        "commit": commit(), "date": datetime.date.today().isoformat(), "command": _command(argv),
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
    return _report(result, args.out, print_network_table, plot_network)


def print_network_table(result) -> None:
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


def plot_network(result, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    impls = list(result["rows"])
    keys = [k for k in ("train_ms", "eval_ms", "train_peak_mb") if k in result["rows"][impls[0]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        have = [i for i in impls if key in result["rows"][i]]
        ax.bar(have, [result["rows"][i][key] for i in have], color=[f"C{impls.index(i)}" for i in have])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title({"train_ms": "training step (ms)", "eval_ms": "inference (ms)",
                      "train_peak_mb": "peak memory, training (MB)"}[key])
    save_figure(fig, f"{result['arch']} {tuple(result['shape'])}, {result['device']}, "
                     f"torch {result['torch']}, {result['dtype']}", path)


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
    kind = argv[0]
    if kind == "block":
        impl, c, shape, dtype = argv[1:5]
        module, x = build_impls(int(c), "cpu", getattr(torch, dtype), shape=tuple(int(v) for v in shape.split(",")))[impl]
        module.train()
        print(resident_growth_mb(train_step(module, x)))
    else:
        impl, arch, shape, dtype = argv[1:5]
        model, x, labels = build_network(impl, arch, "cpu", getattr(torch, dtype), tuple(int(v) for v in shape.split(",")))
        model.train()
        print(resident_growth_mb(network_train_step(model, x, labels)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak-child"]:
        _peak_child(sys.argv[2:])
