"""The tensor-core code path on the CPU: the r2p1d_tc_emulate ops (csrc/emulate/), with the
autograd formulas of r2p1d_ext/ops.py registered for them, as a drop-in for `r2p1d_ext.ops`
in the module (tests monkeypatch `r2p1d_ext.module.ops` with `EmulatedOps`). They run the
GPU kernels' loaders, fragment loads, epilogues and K splits on the host, so a module test
through them checks, without a GPU, what the CUDA tensor-core path computes (bf16, fp16,
and fp32 as TF32)."""
import torch

from r2p1d_ext import ops

EMU = torch.ops.r2p1d_tc_emulate
PLAN_ARGS = ("sm_count", "tile")  # what the emulated ops take after the r2p1d op's arguments

ops.register_autograd("r2p1d_tc_emulate", extra=PLAN_ARGS)


class EmulatedOps(ops.OpSet):
    """The ops the module calls, on the emulated tensor-core kernels planned for a GPU of
    `sm_count` SMs with the `tile` shape (-1: as chosen); the running-statistics update (no
    tensor-core kernel) is r2p1d's own."""

    def __init__(self, sm_count: int = 132, tile: int = -1):
        super().__init__("r2p1d_tc_emulate", sm_count=sm_count, tile=tile)
        self.update_running_stats = ops.update_running_stats
