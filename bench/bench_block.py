#!/usr/bin/env python3
"""Block benchmark: the fused SpatioTemporalConv against the unfused eager block (contiguous
and channels_last_3d), optionally the eager block under torch.compile, and nn.Conv3d of the
same in/out channels (same parameter count), on the R(2+1)D-18 stage shapes.

The implementation is the package's (r2p1d_ext/tools/bench.py, also `r2p1d bench`); this
script adds the repository's default output, bench/results/<date>-<device>.json (+ PNG).

    python bench/bench_block.py                      # CPU, float32, batch 4, 8x112 clips
    python bench/bench_block.py --device cuda --dtype bfloat16 --batch 16 --clip-len 16 --compile
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

from common import RESULTS  # (puts the repository on the path)
from r2p1d_ext.tools import bench
from r2p1d_ext.tools.timing import add_run_options


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, warmup="default 2 on CPU, 10 on CUDA", repeats="default 9 on CPU, 50 on CUDA")
    bench.add_block_options(p)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-<device>.json)")
    args = p.parse_args(argv)
    device = "gpu" if args.device == "cuda" else "cpu"
    args.out = args.out or os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-{device}.json")
    return bench.run_block(args, argv)


if __name__ == "__main__":
    main()
