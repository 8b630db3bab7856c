#!/usr/bin/env python3
"""Network benchmark: a whole R(2+1)D (torchvision's layout, r2plus1d_18 by default) built
from the fused SpatioTemporalConv against the same network built from the unfused eager
block (contiguous and channels_last_3d), on video clips; on the CPU in float32 also the eager
network exported to ONNX Runtime and OpenVINO (when installed). With --baseline torchvision,
against torchvision's own model instead (eager, channels_last_3d, and with --compile under
torch.compile), the fused network being fuse() of it.

Per implementation: the median time of a training step (forward, cross-entropy, backward)
and of an inference forward, after warm-up, all in one process on the same input; and the
peak memory of the first training step (CPU: in a fresh process per implementation, from
the kernel's resident high-water mark; GPU: torch.cuda.max_memory_allocated). This is the
figure users see: the block benchmark (bench_block.py) measures one block alone, where
kernel scratch memory weighs more than in a network, whose layers share it.

The implementation is the package's (r2p1d_ext/tools/bench.py, `r2p1d bench --network`);
this script adds the repository's default output, bench/results/<date>-<device>-network.json.

    python bench/bench_network.py                    # CPU, float32, batch 4, 8x112 clips
    python bench/bench_network.py --device cuda --batch 16 --clip-len 16
    python bench/bench_network.py --device cuda --amp bfloat16 --baseline torchvision --compile   # make gpu-bench's
"""
from __future__ import annotations

from common import bench_script  # (puts the repository on the path)
from r2p1d_ext.tools import bench


def options(p):
    bench.add_network_options(p)
    bench.add_compile_options(p)


def main(argv=None):
    return bench_script(__doc__, argv, dict(warmup="default 1 on CPU, 5 on CUDA", repeats="default 5 on CPU, 20 on CUDA"),
                        options, "-network", bench.run_network)


if __name__ == "__main__":
    main()
