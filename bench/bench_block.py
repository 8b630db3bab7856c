#!/usr/bin/env python3
"""Block benchmark: the fused SpatioTemporalConv against the unfused eager block (contiguous,
channels_last_3d, and with its spatial conv as a 2-D conv over the frames), optionally the
eager block under torch.compile, and nn.Conv3d of the same in/out channels (same parameter
count), on the R(2+1)D-18 stage shapes.

The implementation is the package's (r2p1d_ext/tools/bench.py, also `r2p1d bench`); this
script adds the repository's default output, bench/results/<date>-<device>.json (+ PNG).

    python bench/bench_block.py                      # CPU, float32, batch 4, 8x112 clips
    python bench/bench_block.py --device cuda --dtype bfloat16 --batch 16 --clip-len 16 --compile
"""
from __future__ import annotations

from common import bench_script  # (puts the repository on the path)
from r2p1d_ext.tools import bench


def main(argv=None):
    return bench_script(__doc__, argv, dict(warmup="default 2 on CPU, 10 on CUDA", repeats="default 9 on CPU, 50 on CUDA"),
                        bench.add_block_options, "", bench.run_block)


if __name__ == "__main__":
    main()
