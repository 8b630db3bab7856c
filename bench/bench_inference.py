#!/usr/bin/env python3
"""CPU inference benchmark (the table of docs/inference.md): r2plus1d_18 (torchvision's layout) fused
against the same network unfused in eager PyTorch (contiguous and channels_last_3d) and the
eager network exported to ONNX in ONNX Runtime and OpenVINO (r2p1d_ext/tools/engines.py), float32,
the same weights and input everywhere, at several batch x clip-length sizes. With `--dtype
bfloat16` the fused and eager networks run in bfloat16 (weights and input) and OpenVINO runs
twice, at its default precision (bf16 where the CPU has AMX or AVX512-BF16) and with the f32
hint; ONNX Runtime, float32 only on the CPU, is left out.

The implementations are timed in interleaved rounds (fused, eager, eager_cl, onnxruntime,
openvino, then again), `--repeats` calls each per round after warm-up, and the median over
all rounds is reported: on a shared 2-core machine the speed drifts by 10-20% over minutes,
and timing one implementation after another would put that drift into the ratios.

    python bench/bench_inference.py                        # 1x8, 4x8, 1x16, 4x16, 112x112
    python bench/bench_inference.py --sizes 4x8 --rounds 3
    python bench/bench_inference.py --dtype bfloat16       # the bf16 rows (README: which CPU)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, commit, device_name, pyplot, save, save_figure  # noqa: E402  (puts the repo on the path)
from r2p1d_ext import models, reference  # noqa: E402
from r2p1d_ext.tools import engines  # noqa: E402

ARCHS = models.ARCHS


def _randomised_bn(model):
    """Non-trivial running statistics and affine parameters (a freshly built network's are
    the identity, which would hide a wrong BatchNorm fold)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model


def contenders(arch, shape, threads, dtype=torch.float32):
    """name -> (callable running one inference, output of one call) for one input size; the
    PyTorch networks in `dtype`, the engines from the float32 network (engines.load)."""
    torch.manual_seed(0)
    fused = _randomised_bn(ARCHS[arch](num_classes=400)).eval()
    eager = ARCHS[arch](num_classes=400, conv=reference.SpatioTemporalConv).eval()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(shape)
    eager_cl = ARCHS[arch](num_classes=400, conv=reference.SpatioTemporalConv).eval()
    eager_cl.load_state_dict(fused.state_dict())
    eager_cl = eager_cl.to(memory_format=torch.channels_last_3d)
    xd = x.to(dtype)
    xd_cl = xd.contiguous(memory_format=torch.channels_last_3d)
    fused_d, eager_d, eager_cl_d = (m if dtype == torch.float32 else copy.deepcopy(m).to(dtype)
                                    for m in (fused, eager, eager_cl))
    calls = {"fused": lambda: fused_d(xd), "eager": lambda: eager_d(xd), "eager_cl": lambda: eager_cl_d(xd_cl)}
    versions = {}
    inp = x.numpy()
    reduced = dtype != torch.float32
    for name, (infer, version) in engines.load(eager, x, threads, openvino_default=reduced).items():
        if reduced and name == "onnxruntime":
            continue
        calls[name] = (lambda infer=infer: infer(inp))
        versions[name] = version
    return calls, versions, eager, x


def measure(calls, warmup, rounds, repeats):
    times = {name: [] for name in calls}
    with torch.no_grad():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for name, fn in calls.items():
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="r2plus1d_18", choices=sorted(ARCHS))
    p.add_argument("--sizes", default="1x8,4x8,1x16,4x16", help="batch x clip length, comma-separated")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="calls per implementation per round")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the PyTorch networks' precision (bfloat16: OpenVINO also at its default precision)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-cpu-inference[-bf16].json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    dtype = getattr(torch, args.dtype)
    result = {"device": device_name("cpu"), "torch": torch.__version__, "dtype": args.dtype,
              "cpu_bf16_path": torch.ops.r2p1d.cpu_bf16_path(),
              "commit": commit(), "date": datetime.date.today().isoformat(),
              "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv)),
              "arch": args.arch, "crop": args.crop, "warmup": args.warmup, "rounds": args.rounds,
              "repeats": args.repeats, "sizes": {}}
    for size in args.sizes.split(","):
        batch, clip = (int(v) for v in size.lower().split("x"))
        shape = (batch, 3, clip, args.crop, args.crop)
        calls, versions, eager, x = contenders(args.arch, shape, threads, dtype)
        print(f"{size}: timing {', '.join(calls)} in {args.rounds} interleaved rounds")
        times = measure(calls, args.warmup, args.rounds, args.repeats)
        with torch.no_grad():
            want = copy.deepcopy(eager).double()(x.double())
            errors = {name: engines.rel_err(fn(), want) for name, fn in calls.items() if name != "eager_cl"}
        rows = {name: {"eval_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
                       "rel_err_vs_float64": errors.get(name)} for name, t in times.items()}
        for name, version in versions.items():
            rows[name]["version"] = version
        fused_ms = rows["fused"]["eval_ms"]
        entry = {"shape": list(shape), "rows": rows,
                 "eval_vs_eager": min(rows[k]["eval_ms"] for k in ("eager", "eager_cl")) / fused_ms}
        for engine in ("onnxruntime", "openvino", "openvino_default"):
            if engine in rows:
                entry[f"eval_vs_{engine}"] = rows[engine]["eval_ms"] / fused_ms
        result["sizes"][size] = entry
        print_size(size, entry)
    suffix = "" if dtype == torch.float32 else "-bf16"
    out = args.out or os.path.join(RESULTS, f"{result['date']}-cpu-inference{suffix}.json")
    save(result, out)
    plot(result, out.replace(".json", ".png"))
    return result


def print_size(size, entry):
    print(f"| {size} | " + " | ".join(f"{name} {r['eval_ms']:.1f} ms" for name, r in entry["rows"].items()) + " |")
    ratios = ", ".join(f"{k[8:]} {v:.2f}x" for k, v in entry.items() if k.startswith("eval_vs_"))
    err = entry["rows"]["fused"]["rel_err_vs_float64"]
    print(f"  fused is faster than: {ratios}; its output within {err:.1e} of float64")


def plot(result, path):
    plt = pyplot()
    if plt is None:
        return
    sizes = list(result["sizes"])
    names = list(result["sizes"][sizes[0]]["rows"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(sizes), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([s + (i - (len(names) - 1) / 2) * width for s in range(len(sizes))],
               [result["sizes"][s]["rows"][name]["eval_ms"] for s in sizes], width, label=name, color=f"C{i}")
    ax.set_xticks(range(len(sizes)), [f"batch {s.split('x')[0]} x {s.split('x')[1]} frames" for s in sizes],
                  fontsize=8)
    ax.set_ylabel("inference, ms (median)")
    ax.legend(fontsize=7)
    save_figure(fig, f"{result['arch']} inference, {result['device']}, torch {result['torch']}, {result['dtype']}",
                path)


if __name__ == "__main__":
    main()
