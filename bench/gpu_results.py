#!/usr/bin/env python3
"""The GPU results file: `make gpu-bench`'s parts merged into one
bench/results/<date>-<gpu>.json (+ PNG), and the README's GPU table written from it.

Parts (JSON files in one folder, each written by a bench/ script; a missing part leaves its
keys null and listed under "missing"):
  block-bf16.json     bench_block.py, bf16, batch 32 x 16x112x112, R(2+1)D-18 stage shapes,
                      with the torch.compile baseline (gpu-check's short run has 2 stages and none)
  block-tf32.json     the same in float32 as TF32
  network-bf16.json   bench_network.py --baseline torchvision --amp bfloat16 --compile:
                      r2plus1d_18 fused vs torchvision's (channels_last_3d, eager and compiled)
  ncu-compare.json    bench/ncu_compare.py: Nsight Compute's counters of the forward GEMMs at
                      conv2_x against the emulator's

The keys (docs/benchmarks.md, "GPU results"): device, torch, cudnn, commit, date, command;
rows (per stage shape and precision: fused, eager, eager_cl, eager_2d, compiled, conv3d,
train and eval ms, peak MB); network; train_peak_mem_ratio (the network's training peak, fused over
the best torchvision row) and block_train_peak_mem_ratio; speedup (block_train_vs_eager,
block_train_vs_compile, block_eval_vs_eager: bf16 geometric means over the stages;
net_train_vs_torchvision, net_infer_vs_torchvision); floor (the stage-1 forward against
its 0.44 ms floor); goals (each target, measured, met); ncu; parts (each part whole).

    python bench/gpu_results.py --parts DIR --command "make gpu-bench"   # DIR/<date>-<gpu>.json + .png
    python bench/gpu_results.py --readme bench/results/<date>-h100.json  # the README's GPU section
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys

from common import RESULTS, pyplot, save, save_figure
from r2p1d_ext.tools.bench import EAGER
from r2p1d_ext.tools.timing import geomean

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PARTS = {"block_bf16": "block-bf16.json", "block_tf32": "block-tf32.json", "network": "network-bf16.json",
         "ncu": "ncu-compare.json"}
# The stage-1 (conv2_x) block's forward floor, bf16, batch 32, 16x112x112, on an H100: its
# bytes (input, intermediate written once and read once, output) at HBM bandwidth.
STAGE1_FLOOR_MS = 0.44
# (key, what, target, ">=" or "<="): the speed goals of the GPU path.
GOALS = [
    ("block_train_vs_eager", "block training vs eager", 1.5, ">="),
    ("block_train_vs_compile", "block training vs torch.compile", 1.2, ">="),
    ("block_eval_vs_eager", "block inference vs eager", 2.0, ">="),
    ("net_train_vs_torchvision", "r2plus1d_18 training vs torchvision", 1.3, ">="),
    ("net_infer_vs_torchvision", "r2plus1d_18 inference vs torchvision", 1.5, ">="),
    ("train_peak_mem_ratio", "r2plus1d_18 training peak memory vs torchvision", 0.7, "<="),
]
BEGIN, END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"
IMPLS = ("fused", "eager", "eager_cl", "eager_2d", "compiled", "conv3d")  # the block rows' columns, in order


def _load(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def gpu_slug(device: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100": the file name's device part."""
    match = re.search(r"\b([A-Z]\d{2,4}[A-Za-z]?)\b", device or "")
    return match.group(1).lower() if match else re.sub(r"[^a-z0-9]+", "-", (device or "gpu").lower()).strip("-")


def block_peak_ratio(block):
    """Geometric mean over the stages of the fused block's training peak over the best eager one."""
    if not block:
        return None
    ratios = []
    for r in block["rows"]:
        eager = [r[f"{i}_train_peak_mb"] for i in EAGER if f"{i}_train_peak_mb" in r]
        if "fused_train_peak_mb" in r and eager:
            ratios.append(r["fused_train_peak_mb"] / min(eager))
    return geomean(v for v in ratios if v > 0)


def merge(parts: dict, command: str) -> dict:
    """The results file's dictionary from the parts (any may be None)."""
    bf16, tf32, net, ncu = (parts.get(k) for k in ("block_bf16", "block_tf32", "network", "ncu"))
    first = next((p for p in (bf16, tf32, net) if p), None)
    if first is None:
        raise ValueError("no benchmark part found: expected block-bf16.json, block-tf32.json or network-bf16.json")
    rows = []
    for precision, part in (("bf16", bf16), ("tf32", tf32)):
        for r in (part or {}).get("rows", []):
            rows.append({"precision": precision, **r})
    speed = (bf16 or {}).get("speedup", {})
    speedup = {
        "block_train_vs_eager": speed.get("block_train_vs_eager"),
        "block_train_vs_compile": speed.get("block_train_vs_compile"),
        "block_eval_vs_eager": speed.get("block_eval_vs_eager"),
        "net_train_vs_torchvision": (net or {}).get("train_vs_torchvision"),
        "net_infer_vs_torchvision": (net or {}).get("eval_vs_torchvision"),
    }
    stage1 = next((r for r in (bf16 or {}).get("rows", []) if r["stage"] == "conv2_x"), None)
    floor = None
    if stage1 and bf16.get("batch") == 32 and bf16.get("clip_len") == 16:
        floor = {"floor_ms": STAGE1_FLOOR_MS, "fused_eval_ms": stage1["fused_eval_ms"],
                 "fraction": STAGE1_FLOOR_MS / stage1["fused_eval_ms"]}
    result = {
        "device": first["device"], "torch": first["torch"], "cudnn": first.get("cudnn"),
        "commit": first["commit"], "date": first.get("date", datetime.date.today().isoformat()),
        "command": command,
        "rows": rows,
        "network": {k: net[k] for k in ("arch", "shape", "amp", "baseline", "compile_mode", "rows")} if net else None,
        "train_peak_mem_ratio": (net or {}).get("peak_vs_torchvision"),
        "block_train_peak_mem_ratio": block_peak_ratio(bf16),
        "speedup": speedup,
        "floor": floor,
        "ncu": ncu,
    }
    measured = {**speedup, "train_peak_mem_ratio": result["train_peak_mem_ratio"]}
    result["goals"] = [{"key": key, "what": what, "op": op, "target": target, "measured": measured[key],
                        "met": None if measured[key] is None else
                        (measured[key] >= target if op == ">=" else measured[key] <= target)}
                       for key, what, target, op in GOALS]
    result["missing"] = sorted([k for k, v in measured.items() if v is None] +
                               [k for k, v in (("floor", floor), ("ncu", ncu)) if v is None] +
                               [f"part {PARTS[k]}" for k, v in parts.items() if v is None])
    commits = {p["commit"] for p in (bf16, tf32, net) if p}
    if len(commits) > 1:
        result["commit_note"] = f"the parts name several commits: {', '.join(sorted(commits))}"
    result["parts"] = {k: v for k, v in parts.items() if v is not None}
    return result


def chart(result, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    stages = sorted({r["stage"] for r in result["rows"]})
    width = 0.2
    series = [(p, m) for p in ("bf16", "tf32") for m in ("train", "eval")]
    for k, (precision, mode) in enumerate(series):
        by_stage = {r["stage"]: r[f"{mode}_vs_eager"] for r in result["rows"] if r["precision"] == precision}
        if by_stage:
            axes[0].bar([i + k * width for i, s in enumerate(stages) if s in by_stage],
                        [by_stage[s] for s in stages if s in by_stage], width, label=f"{precision} {mode}")
    axes[0].axhline(1, color="gray", lw=0.8)
    axes[0].set_xticks([i + 1.5 * width for i in range(len(stages))], stages)
    axes[0].set_title("block: fused vs the best eager (x)")
    axes[0].legend(fontsize=7)
    if result["network"]:
        rows = result["network"]["rows"]
        names = list(rows)
        for j, key in enumerate(("train_ms", "eval_ms")):
            axes[1].bar([i + 0.4 * j for i in range(len(names))], [rows[n][key] for n in names], 0.4, label=key[:-3])
        axes[1].set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=7)
        axes[1].set_title(f"{result['network']['arch']}: ms per step (autocast {result['network']['amp']})")
        axes[1].legend(fontsize=7)
    goals = [g for g in result["goals"] if g["measured"] is not None]
    if goals:
        axes[2].barh([g["key"] for g in goals], [g["measured"] for g in goals],
                     color=["C2" if g["met"] else "C3" for g in goals])
        for i, g in enumerate(goals):
            axes[2].plot([g["target"]] * 2, [i - 0.4, i + 0.4], color="black")
        axes[2].tick_params(axis="y", labelsize=7)
        axes[2].set_title("goals: measured (bar) and target (line)")
    save_figure(fig, f"{result['device']}, torch {result['torch']}, commit {result['commit']}", path)


def _x(v, spec=".2f"):
    return "-" if v is None else f"{v:{spec}}x"


def readme_section(result, chart_path: str) -> str:
    """The README's GPU section (between the markers) for the results file."""
    lines = [f"GPU: {result['device']}, torch {result['torch']}, cuDNN {result['cudnn']}, commit "
             f"`{result['commit']}`, {result['date']} (`{result['command']}`). Block: batch 32 x 16x112x112 "
             "R(2+1)D-18 stage shapes; every ratio against the best eager form (contiguous, channels_last_3d, "
             "or its spatial conv as a 2-D conv over the frames) in the same run, medians of CUDA-event timings "
             "after warm-up.", "",
             "| | measured | goal |", "| --- | ---: | --- |"]
    for g in result["goals"]:
        mark = "" if g["met"] is None else (" (met)" if g["met"] else " (not met)")
        lines.append(f"| {g['what']} | {_x(g['measured'])} | {g['op']} {g['target']}x{mark} |")
    if result["floor"]:
        f = result["floor"]
        lines.append(f"| conv2_x block forward vs its {f['floor_ms']} ms floor | {100 * f['fraction']:.0f}% "
                     f"({f['fused_eval_ms']:.2f} ms) | |")
    names = "fused / eager / channels_last / frames as Conv2d / compiled / Conv3d"
    lines += ["", f"| stage | precision | train ms: {names} | eval ms: {names} |", "| --- | --- | --- | --- |"]
    for r in result["rows"]:
        cell = lambda mode: " / ".join(f"{r[k]:.2f}" if k in r else "-" for k in  # noqa: E731
                                       (f"{i}_{mode}_ms" for i in IMPLS))
        lines.append(f"| {r['stage']} | {r['precision']} | {cell('train')} | {cell('eval')} |")
    slow = [f"{r['stage']} {r['precision']} {impl}" for r in result["rows"] for impl in r.get("slow_paths", {})]
    if slow:
        lines += ["", "Baselines that ran PyTorch's slow convolution path: " + ", ".join(slow) + "."]
    if result["missing"]:
        lines += ["", "Not measured in this run: " + ", ".join(result["missing"]) + "."]
    lines += ["", f"![GPU results]({chart_path})"]
    return "\n".join(lines)


def write_readme(results_path: str, readme: str = README) -> None:
    with open(results_path) as f:
        result = json.load(f)
    with open(readme) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: expected the markers {BEGIN} and {END}")
    chart_path = os.path.relpath(results_path[:-5] + ".png", os.path.dirname(os.path.abspath(readme)))
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(head + BEGIN + "\n" + readme_section(result, chart_path) + "\n" + END + tail)
    print(f"wrote the GPU section of {readme}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=RESULTS, help="the folder holding the parts (default bench/results)")
    p.add_argument("--command", default="make gpu-bench", help="the command that produced the parts")
    p.add_argument("--out", default=None, help="the results path (default <parts>/<date>-<gpu>.json)")
    p.add_argument("--readme", metavar="RESULTS_JSON", help="instead: write the README's GPU section from this file")
    args = p.parse_args(argv)
    if args.readme:
        write_readme(args.readme)
        return 0
    parts = {key: _load(args.parts, name) for key, name in PARTS.items()}
    result = merge(parts, args.command)
    out = args.out or os.path.join(args.parts, f"{result['date']}-{gpu_slug(result['device'])}.json")
    save(result, out)
    chart(result, out[:-5] + ".png")
    for g in result["goals"]:
        print(f"  {g['what']}: {_x(g['measured'])} (goal {g['op']} {g['target']}x)"
              + ("" if g["met"] is None else (", met" if g["met"] else ", NOT met")))
    if result["missing"]:
        print("  missing: " + ", ".join(result["missing"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
