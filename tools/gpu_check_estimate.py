#!/usr/bin/env python3
"""The dry run of `make gpu-check` (GPU_CHECK_DRY_RUN=1): what it will run on the GPU
machine and how long that should take there, to fit one device call (10 minutes a command,
15 in all with the machine's start; the check's budget is 7 minutes). With --bench, the
same for `make gpu-bench` (budget 6.5 minutes).

The estimate is built from what this machine can measure:
- the build: each source file's compile time, measured here on one core per file
  (COMPILE_SECONDS below, from the .ninja_log of a build of this tree: refresh them with
  `python tools/gpu_check_estimate.py --measure BUILD_DIR`), scheduled longest first on the
  GPU machine's 16 cores, assuming its cores are as fast as ours;
- the tests: the CUDA tests collected here (skipped without a GPU, but counted), each at
  an assumed cost on the GPU, over the pytest-xdist workers;
- the sanitizer runs and the short benchmark: assumed costs per run, written below.
The assumptions are what a first run will correct: the check prints each step's time.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = os.path.join(ROOT, "tools", "compile_seconds.json")

CORES = 16
WORKERS = 8                 # pytest-xdist workers (gpu_check.sh)
LINK_AND_PIP = 25.0         # seconds: pip's set-up, the link, the install
WORKER_START = 20.0         # seconds: a pytest worker's torch import, CUDA context, collection
TEST_SECONDS = 0.5          # per CUDA test (small shapes)
EXAMPLE_SECONDS = 0.15      # per hypothesis example of a CUDA test (50 per test)
COMPILE_TEST_SECONDS = 40.0  # per test that runs torch.compile (Inductor compiles on the GPU)
SANITIZER_RUNS = 4          # memcheck, racecheck, synccheck, initcheck, each over both families
SANITIZER_SECONDS = 40.0    # per run: start-up under the tool and the tiny cases
CHECK_SECONDS = 25.0        # r2p1d check --device cuda --quick: both families, 2 block shapes, every dtype
BENCH_SECONDS = 30.0        # bench_block bf16, batch 32 x 16x112x112, conv2_x and conv3_x, no compile or memory
BUDGET = 7 * 60
# `make gpu-bench` (tools/gpu_bench.sh), after gpu-check on the same warm machine (built):
# assumed costs per step, which its first run will correct (it prints each step's time).
BENCH_STEPS = [
    ("block bf16, 4 stage shapes, with torch.compile (mode default, static shapes: a train and an eval graph "
     "per shape) and peak memory", 150.0),
    ("r2plus1d_18 fused vs torchvision (eager, channels_last_3d, torch.compile), autocast bf16, batch 16",
     150.0),
    ("ncu: the metric query, the forward GEMMs at conv2_x profiled, the emulator's counts", 45.0),
    ("block float32 as TF32, 4 stage shapes, no torch.compile", 25.0),
    ("the results file (merge, chart)", 5.0),
]
BENCH_BUDGET = 390  # 15 minutes of device time: the machine's start (~1.5), gpu-check's 7, then this


def measure(build_dir: str) -> None:
    """Per-source compile seconds from BUILD_DIR's .ninja_log, written to TIMES."""
    times = {}
    with open(os.path.join(build_dir, ".ninja_log")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            start, end, _, output, _ = line.rstrip("\n").split("\t")
            match = re.search(r"(csrc/.*)\.o$", output)
            # The log keeps the objects of sources since removed: only today's sources count.
            if match and any(os.path.exists(os.path.join(ROOT, match.group(1) + ext)) for ext in (".cpp", ".cu")):
                times[match.group(1)] = round((int(end) - int(start)) / 1000.0, 1)
    with open(TIMES, "w") as f:
        json.dump(dict(sorted(times.items())), f, indent=1)
    print(f"{len(times)} compile times -> {TIMES}")


def build_seconds(times: dict) -> float:
    """Longest-first schedule of the files on CORES cores (the files compile in parallel)."""
    cores = [0.0] * CORES
    for t in sorted(times.values(), reverse=True):
        heapq.heapreplace(cores, cores[0] + t)
    return max(cores) + LINK_AND_PIP


def collected(args) -> list:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "::" in line]


def bench_estimate() -> int:
    """The dry run of `make gpu-bench`: its steps and their assumed costs."""
    print("make gpu-bench, dry run: the steps on the GPU machine (after gpu-check, built) and their estimated time")
    for what, seconds in BENCH_STEPS:
        print(f"  {seconds:6.0f} s  {what}")
    total = sum(s for _, s in BENCH_STEPS)
    print(f"  {total:6.0f} s  in all ({total / 60:.1f} min; the budget is {BENCH_BUDGET / 60:.1f} min"
          f"{'' if total <= BENCH_BUDGET else ': OVER'}); GPU_CHECK_COMPILE=0 leaves out the torch.compile "
          "baselines")
    with open(TIMES) as f:
        build = build_seconds(json.load(f))
    print(f"On a fresh machine (the last one went back: it stays warm 30 s after a call) it builds first: "
          f"+{build:.0f} s, and the machine's start.")
    return 0 if total <= BENCH_BUDGET else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", metavar="BUILD_DIR", help="record the compile times of a ninja build")
    p.add_argument("--bench", action="store_true", help="the dry run of make gpu-bench instead")
    args = p.parse_args()
    if args.measure:
        measure(args.measure)
        return 0
    if args.bench:
        return bench_estimate()
    with open(TIMES) as f:
        times = json.load(f)
    tests = collected(["tests/test_cuda_tc.py"]) + collected(["tests", "-k", "cuda", "--ignore=tests/test_cuda_tc.py"])
    hypothesis = [t for t in tests if "matches_reference" in t or "random" in t]
    compiled = [t for t in tests if "compile" in t]
    plain = len(tests) - len(hypothesis) - len(compiled)
    test_seconds = WORKER_START + (plain * TEST_SECONDS + len(hypothesis) * 50 * EXAMPLE_SECONDS
                                   + len(compiled) * COMPILE_TEST_SECONDS) / WORKERS
    steps = [
        (f"build: {len(times)} sources on {CORES} cores (longest {max(times.values()):.0f} s, "
         f"{sum(times.values()):.0f} s in all, measured here)", build_seconds(times)),
        (f"CUDA tests: {len(tests)} ({len(hypothesis)} with 50 random examples, {len(compiled)} torch.compile) "
         f"on {WORKERS} workers", test_seconds),
        ("r2p1d check --device cuda --quick (both kernel families, every dtype)", CHECK_SECONDS),
        (f"compute-sanitizer: {SANITIZER_RUNS} runs (memcheck, racecheck, synccheck, initcheck; both families)",
         SANITIZER_RUNS * SANITIZER_SECONDS),
        ("short benchmark: block bf16, batch 32 x 16x112x112, conv2_x and conv3_x", BENCH_SECONDS),
    ]
    print("make gpu-check, dry run: the steps on the GPU machine and their estimated time")
    for what, seconds in steps:
        print(f"  {seconds:6.0f} s  {what}")
    total = sum(s for _, s in steps)
    print(f"  {total:6.0f} s  in all ({total / 60:.1f} min; the budget is {BUDGET // 60} min"
          f"{'' if total <= BUDGET else ': OVER'})")
    print("Assumptions (tools/gpu_check_estimate.py): the GPU machine's cores as fast as this machine's; "
          f"{TEST_SECONDS} s per CUDA test, {EXAMPLE_SECONDS} s per random example, {COMPILE_TEST_SECONDS:.0f} s per "
          f"torch.compile test, {SANITIZER_SECONDS:.0f} s per sanitizer run, {CHECK_SECONDS:.0f} s for r2p1d check, "
          f"{BENCH_SECONDS:.0f} s for the benchmark.")
    return 0 if total <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
