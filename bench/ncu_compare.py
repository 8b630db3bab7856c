#!/usr/bin/env python3
"""Nsight Compute's counters of the two forward GEMMs at conv2_x (the spatial forward with
its statistics, the temporal forward with BN+ReLU on its A loads; bf16, batch 32 x
16x56x56, 64 -> 144 -> 64 channels) against what the CPU emulator counts for the same
launches (bench/tc_report.py, csrc/emulate/counters.h): do they agree?

Three steps, which `make gpu-bench` (tools/gpu_bench.sh) runs on the GPU machine:

    ncu --query-metrics > metrics.txt                        # what this ncu can read
    ncu --clock-control none --profile-from-start off --print-units base --csv --page raw \\
        --metrics "$(python bench/ncu_compare.py --metrics metrics.txt)" --log-file ncu.csv \\
        python bench/ncu_compare.py --profiled               # one launch of each, profiled
    python bench/ncu_compare.py --csv ncu.csv --out ncu-compare.json

The comparison is per CTA (ncu's totals over the grid's CTAs; the emulator's sums over its
sampled CTAs, divided by their number): requests and sectors of the global loads (plain
and cp.async) and stores, requests and wavefronts of the shared-memory reads (LDS and
ldmatrix) and writes (STS and cp.async), and the bank-conflict wavefronts. A row agrees
when the two are within 10%; a row whose ncu metrics this ncu lacks says which.
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402

LAYER = "conv2_x"
GEMMS = ("spatial_fprop", "temporal_fprop")
TOLERANCE = 0.10
G = "l1tex__t_{}_pipe_lsu_mem_global_op_{}.sum"
W = "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_{}.sum"
I = "smsp__inst_executed_op_{}.sum"  # noqa: E741
B = "l1tex__data_bank_conflicts_pipe_lsu_mem_shared{}.sum"
# (row, the emulator's classes (space, op), the emulator's field, the ncu metrics summed;
# a second list is the fallback where this ncu lists none of the first)
ROWS = [
    ("global load requests", ("global", "read"), "requests", [G.format("requests", "ld"), G.format("requests", "ldgsts")]),
    ("global load sectors", ("global", "read"), "sectors", [G.format("sectors", "ld"), G.format("sectors", "ldgsts")]),
    ("global store requests", ("global", "write"), "requests",
     [G.format("requests", "st"), G.format("requests", "red"), G.format("requests", "atom")]),
    ("global store sectors", ("global", "write"), "sectors",
     [G.format("sectors", "st"), G.format("sectors", "red"), G.format("sectors", "atom")]),
    ("shared read requests", ("shared", "read"), "requests", [I.format("shared_ld"), I.format("ldsm")]),
    ("shared read wavefronts", ("shared", "read"), "wavefronts", [W.format("ld"), W.format("ldsm")]),
    ("shared write requests", ("shared", "write"), "requests", [I.format("shared_st"), I.format("ldgsts")]),
    ("shared write wavefronts", ("shared", "write"), "wavefronts", [W.format("st"), W.format("ldgsts")]),
    ("shared bank-conflict wavefronts", ("shared", None), "conflicts",
     [B.format("")], [B.format("_op_ld"), B.format("_op_st"), B.format("_op_ldsm")]),
]
EXTRA = ["launch__grid_size", "gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
         "sm__throughput.avg.pct_of_peak_sustained_elapsed",
         "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
         "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"]
WANTED = list(dict.fromkeys([m for row in ROWS for ms in row[3:] for m in ms] + EXTRA))


@functools.lru_cache(maxsize=None)
def _conv2_x():
    """The conv2_x block of R(2+1)D-18 and its input shape (bench/tc_report.py's layers)."""
    import tc_report
    for name, _, mod, shape in tc_report.layers():
        if name.startswith(LAYER):
            return mod, shape
    raise RuntimeError(f"no {LAYER} layer in tc_report.layers()")


# ------------------------------------------------------------------ on the GPU, under ncu
def profiled() -> None:
    """Runs the two forward ops on CUDA (tensor-core kernels, bf16, random inputs), then
    once more between cudaProfilerStart/Stop: the launches ncu profiles."""
    import r2p1d_ext  # noqa: F401  (loads the library)
    import tc_report
    os.environ["R2P1D_CUDA_KERNELS"] = "tc"
    mod, shape = _conv2_x()
    a = tc_report._inputs(mod, shape, torch.bfloat16, "spatial_fprop")
    b = tc_report._inputs(mod, shape, torch.bfloat16, "temporal_fprop")
    randn = lambda t: torch.randn(t.shape, dtype=t.dtype).cuda()  # noqa: E731
    x = randn(a["x"]).contiguous(memory_format=torch.channels_last_3d)  # the layout the kernels take
    ws, wt = randn(a["w"]), randn(b["w"])
    scale, shift = torch.rand(b["scale"].shape).add(0.5).cuda(), torch.randn(b["shift"].shape).cuda()
    ops = torch.ops.r2p1d

    def forward():
        y, mean, _ = ops.spatial_conv_stats(x, ws, None, a["stride"], a["padding"])
        ops.temporal_conv_bnrelu(y, mean, scale, shift, wt, None, b["stride"], b["padding"])

    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    forward()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled the {LAYER} forward GEMMs: {tuple(shape)}, bf16")


# ------------------------------------------------------------------ the metric list
def available_metrics(query_output: str) -> set:
    """Base metric names in `ncu --query-metrics` output (one per line, first column)."""
    return {m.group(1) for m in re.finditer(r"^\s*([a-z0-9]+__[a-z0-9_]+)", query_output, re.M)}


def metric_list(query_output: str) -> list:
    """WANTED, less the metrics whose base name this ncu does not list (all of WANTED when
    the listing could not be read)."""
    have = available_metrics(query_output)
    if not have:
        return WANTED
    return [m for m in WANTED if m.split(".")[0] in have]


# ------------------------------------------------------------------ reading ncu's CSV
def _number(text: str):
    text = text.strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def read_ncu_csv(path: str) -> list:
    """The kernels of `ncu --csv --page raw` output: [{"name", "metrics": {name: value}}],
    in launch order (ncu's own ==PROF== lines, the units row and blank lines are skipped)."""
    with open(path) as f:
        lines = [line for line in f if not line.startswith("==")]
    start = next((i for i, line in enumerate(lines) if '"Kernel Name"' in line), None)
    if start is None:
        raise ValueError(f"{path}: expected ncu's CSV (a header row with \"Kernel Name\"), found none")
    reader = csv.reader(lines[start:])
    header = next(reader)
    kernels = []
    for row in reader:
        cells = dict(zip(header, row))
        if len(row) != len(header) or not cells["Kernel Name"].strip():
            continue  # the units row (its name cell is empty), blank lines
        metrics = {k: _number(v) for k, v in cells.items() if "__" in k}
        kernels.append({"name": cells.get("Kernel Name", ""), "grid": cells.get("Grid Size", ""),
                        "metrics": {k: v for k, v in metrics.items() if v is not None}})
    return kernels


def classify(kernels: list) -> dict:
    """{gemm: kernel} for the two forward GEMMs: by the problem type in the kernel's name
    (Im2colK: the spatial forward; TemporalK with DenseK: the temporal forward), else the
    first and second igemm_kernel launched."""
    found = {}
    for k in kernels:
        if "Im2colK" in k["name"]:
            found.setdefault("spatial_fprop", k)
        elif "TemporalK" in k["name"] and "DenseK" in k["name"]:
            found.setdefault("temporal_fprop", k)
    if len(found) < 2:
        igemm = [k for k in kernels if "igemm_kernel" in k["name"]]
        found = dict(zip(GEMMS, igemm))
    return found


def _ctas(kernel: dict) -> float:
    if "launch__grid_size" in kernel["metrics"]:
        return kernel["metrics"]["launch__grid_size"]
    dims = [int(v) for v in re.findall(r"\d+", kernel["grid"])]
    if not dims:
        raise ValueError(f"no grid size for kernel {kernel['name'][:80]}")
    return float(math.prod(dims))


# ------------------------------------------------------------------ the comparison
def emulated(gemm: str, sample: int = 3) -> dict:
    """The emulator's counts of `gemm`'s launch at conv2_x, bf16 (H100: 132 SMs), over
    `sample` CTAs spread over the grid, as bench/tc_report.py counts them (its settings of
    the emulator's variables, put back after)."""
    import tc_report
    mod, shape = _conv2_x()
    settings = {"R2P1D_EMULATOR_COUNTERS": "on", "R2P1D_EMULATOR_SAMPLE": str(sample), "R2P1D_EMULATOR_CHECKS": None}
    saved = {k: os.environ.get(k) for k in settings}
    try:
        _set_environ(settings)
        torch.ops.r2p1d_tc_emulate.counters()  # drop earlier counts
        return tc_report.run_gemm(mod, shape, torch.bfloat16, gemm, 132)
    finally:
        _set_environ(saved)


def _set_environ(values: dict) -> None:
    """Sets each variable, or removes it where its value is None."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _emulator_value(launch: dict, space: str, op, field: str) -> float:
    """Per CTA: `field` summed over the launch's access classes in `space` (and of `op`,
    unless None); "conflicts": the wavefronts past the ideal."""
    import tc_report
    classes = tc_report._classes(launch, space=space, **({} if op is None else {"op": op}))
    if field == "conflicts":
        total = sum(c["wavefronts"] - c["ideal_wavefronts"] for c in classes)
    else:
        total = sum(c[field] for c in classes)
    return total / launch["ctas_counted"]


def compare(kernels: list, launches: dict) -> dict:
    """Per GEMM: the rows (per CTA: emulator, ncu, ratio, agree), the kernel's time and DRAM
    bytes as ncu read them, and the CTA counts of both."""
    found = classify(kernels)
    out = {}
    for gemm in GEMMS:
        launch = launches[gemm]
        kernel = found.get(gemm)
        entry = {"emulator_ctas": launch["ctas"], "plan": launch["plan"], "rows": []}
        if kernel is None:
            entry["error"] = f"ncu profiled no {gemm} kernel (kernels: {[k['name'][:60] for k in kernels]})"
            out[gemm] = entry
            continue
        ctas = _ctas(kernel)
        m = kernel["metrics"]
        entry.update(kernel=kernel["name"][:200], ncu_ctas=ctas,
                     extra={k: m[k] for k in EXTRA if k in m})
        for what, (space, op), field, *choices in ROWS:
            emu = _emulator_value(launch, space, op, field)
            metrics = next((ms for ms in choices if any(x in m for x in ms)), choices[0])
            have = [x for x in metrics if x in m]
            row = {"what": what, "emulator": emu, "ncu_metrics": have,
                   "ncu_missing": [x for x in metrics if x not in m]}
            if have:
                row["ncu"] = sum(m[x] for x in have) / ctas
                row["ratio"] = row["ncu"] / emu if emu else None
                row["agree"] = (abs(row["ncu"] - emu) <= TOLERANCE * max(abs(emu), 1e-9)) if emu else row["ncu"] == 0
            entry["rows"].append(row)
        out[gemm] = entry
    rows = [r for e in out.values() for r in e["rows"] if "agree" in r]
    out["summary"] = {"rows": len(rows), "agree": sum(bool(r["agree"]) for r in rows), "tolerance": TOLERANCE}
    return out


def print_table(result: dict) -> None:
    for gemm in GEMMS:
        e = result[gemm]
        print(f"\n{gemm} at {LAYER} (bf16): {e.get('error') or e['kernel'][:90]}")
        if "error" in e:
            continue
        t = e["extra"].get("gpu__time_duration.sum")
        print(f"  CTAs: ncu {e['ncu_ctas']:.0f}, emulator {e['emulator_ctas']}"
              + (f"; {t / 1e3:.1f} us" if t is not None else ""))
        print(f"  {'per CTA':32} {'emulator':>12} {'ncu':>12} {'ncu/emu':>8}")
        for r in e["rows"]:
            if "ncu" not in r:
                print(f"  {r['what']:32} {r['emulator']:12.1f} {'n/a':>12}   (ncu lacks {', '.join(r['ncu_missing'])})")
                continue
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
            print(f"  {r['what']:32} {r['emulator']:12.1f} {r['ncu']:12.1f} {ratio:>8} "
                  f"{'agree' if r['agree'] else 'DIFFER'}")
    s = result["summary"]
    print(f"\n{s['agree']} of {s['rows']} rows agree within {100 * s['tolerance']:.0f}%")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiled", action="store_true", help="run the launches ncu profiles (on the GPU)")
    p.add_argument("--metrics", metavar="QUERY_OUTPUT", help="print the metric list for ncu, given its "
                                                              "--query-metrics output in this file")
    p.add_argument("--csv", help="ncu's --csv --page raw output of the --profiled run")
    p.add_argument("--out", default=None, help="write the comparison here as JSON")
    args = p.parse_args(argv)
    if args.profiled:
        profiled()
        return 0
    if args.metrics:
        with open(args.metrics) as f:
            print(",".join(metric_list(f.read())))
        return 0
    if not args.csv:
        p.error("expected --profiled, --metrics FILE or --csv FILE")
    import r2p1d_ext  # noqa: F401  (the emulator's ops)
    result = compare(read_ncu_csv(args.csv), {g: emulated(g) for g in GEMMS})
    print_table(result)
    if args.out:
        save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
