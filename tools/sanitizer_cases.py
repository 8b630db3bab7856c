#!/usr/bin/env python3
"""One tiny case of every CUDA kernel of the kernel families named, for compute-sanitizer
(make gpu-check runs each tool once over both families):

    compute-sanitizer --tool memcheck python tools/sanitizer_cases.py tc direct

`tc`: the six tensor-core GEMMs (spatial forward with statistics, both spatial gradients,
temporal forward, both temporal gradients) and the inference op's two, in bf16 and in
float32 as TF32, with each tile shape (R2P1D_CUDA_TILE), channel counts that take the
16-byte and the narrower loads, and K splits of the weight gradients and of the forwards.
`direct`: the same ops on the direct kernels, float32, and the running-statistics update.
Shapes stay tiny: under racecheck every shared-memory access is tracked. Prints one line
per family; the sanitizer's report is what counts."""
from __future__ import annotations

import os
import sys

import torch


# (input channels, mid channels, frames, size): 16-byte loads; odd channels (narrower
# loads); 1152 output pixels, whose weight gradients split K; one CTA of output with a deep K
# (128 x 9 taps, 384 x 3), whose forwards split K.
CASES = [(8, 16, 2, 6), (3, 45, 2, 7), (16, 32, 2, 24), (128, 384, 3, 4)]


def block_ops(dtype, c, m, t, s, g, family):
    """Every op once, on CUDA, for input channels c, mid channels m, t frames of s x s."""
    ops = torch.ops.r2p1d
    r = lambda *shape: torch.randn(*shape, generator=g).to(dtype).cuda()  # noqa: E731
    vec = lambda: torch.rand(m, generator=g).add(0.5).cuda()  # noqa: E731
    x = r(2, c, t, s, s).contiguous(memory_format=torch.channels_last_3d)
    ws, bs, wt, bt = r(m, c, 1, 3, 3), r(m), r(12, m, 3, 1, 1), r(12)
    y, mean, var = ops.spatial_conv_stats(x, ws, bs, [1, 1], [1, 1])
    ops.spatial_conv_backward(torch.randn_like(y), x, ws, y, mean, vec(), vec(), [1, 1], [1, 1], [True] * 3)
    scale, shift = vec(), vec()
    out = ops.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, 1, 1)
    ops.temporal_conv_bnrelu_backward(torch.randn_like(out), y, mean, scale, shift, wt, 1, 1, [True] * 6)
    ops.fused_eval(x, ws, bs, wt, bt, [1, 1, 1], [1, 1, 1], torch.randn_like(out), True)
    if family == "direct":
        rm, rv, n = torch.zeros(m).cuda(), torch.ones(m).cuda(), torch.tensor(0).cuda()
        ops.update_running_stats(rm, rv, n, mean, var, y.numel() // m, 0.1)


def run(family: str) -> None:
    import r2p1d_ext  # noqa: F401  (loads the library)
    os.environ["R2P1D_CUDA_KERNELS"] = family
    torch.backends.cudnn.allow_tf32 = True  # float32 as TF32 on the tensor cores
    dtypes = [torch.bfloat16, torch.float32] if family == "tc" else [torch.float32]
    tiles = [str(i) for i in range(6)] if family == "tc" else ["auto"]  # every shape of csrc/tc/plan.h
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for tile in tiles:
            os.environ["R2P1D_CUDA_TILE"] = tile
            for case in CASES:
                block_ops(dtype, *case, g, family)
    torch.cuda.synchronize()
    print(f"sanitizer cases ({family}): every kernel ran")


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(f not in ("tc", "direct") for f in sys.argv[1:]):
        sys.exit("usage: sanitizer_cases.py tc|direct [tc|direct]")
    for family in sys.argv[1:]:
        run(family)
