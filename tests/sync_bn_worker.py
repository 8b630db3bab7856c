"""One process of tests/test_sync_bn.py's multi-process runs (gloo, CPU):

    python tests/sync_bn_worker.py CASE WORLD RANK INIT_FILE OUT_FILE

builds CASE's model (seeded: every process and the test's one-process reference build the
same), converts its BatchNorm layers with the standard ``nn.SyncBatchNorm.convert_sync_batchnorm``
(under DDP, which refuses it on the CPU: ``r2p1d_ext.sync_bn.convert_sync_batchnorm``), runs a
training step on this rank's slice of CASE's batch (uneven slices, some empty) and
saves the output, the input gradient, the parameter gradients and the buffers to OUT_FILE.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# (model, dtype, full batch shape, per-rank clips by world size)
CASES = {
    "block-f64": ("block", torch.float64, (6, 8, 4, 7, 6), {2: [4, 2], 3: [2, 0, 4]}),
    "block-f32": ("block", torch.float32, (6, 8, 4, 7, 6), {2: [1, 5], 3: [3, 3, 0]}),
    "network-f64": ("network", torch.float64, (5, 3, 4, 24, 24), {2: [3, 2], 3: [2, 0, 3]}),
    # torch.compile'd (aot_eager) after the conversion, and the network under DDP
    "block-f64-compiled": ("block", torch.float64, (6, 8, 4, 7, 6), {2: [4, 2], 3: [2, 0, 4]}),
    "network-f64-ddp": ("network", torch.float64, (5, 3, 4, 24, 24), {2: [3, 2], 3: [2, 0, 3]}),
}


def build(case: str):
    """(model in train mode, input batch, output gradient) of CASE, the same every call."""
    import r2p1d_ext
    from r2p1d_ext.models import build_model

    kind, dtype, shape, _ = CASES[case]
    torch.manual_seed(0)
    if kind == "block":
        model = r2p1d_ext.SpatioTemporalConv(shape[1], 10, 3, stride=(1, 2, 1), padding=1, mid_channels=9)
    else:
        model = build_model("r2plus1d_10", 4)
    model = model.to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm parameters and running statistics
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():  # the output's shape, in eval (no state changes)
        out_shape = model.eval()(x[:1]).shape
    grad = torch.randn((shape[0],) + tuple(out_shape[1:]), dtype=dtype, generator=torch.Generator().manual_seed(1))
    return model.train(), x, grad


def step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, run=None) -> dict:
    """One forward and backward of sum(run(x) * grad), run = model or a wrapper of it (a
    compiled or DDP one): what the tests compare."""
    x = x.clone().requires_grad_()
    out = (model if run is None else run)(x)
    (out * grad).sum().backward()
    return {"out": out.detach(), "grad_x": x.grad,
            "grads": {n: p.grad for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()}}


def main(case: str, world: int, rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from r2p1d_ext import sync_bn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, x, grad = build(case)
    sizes = CASES[case][3][world]
    start = sum(sizes[:rank])
    part = slice(start, start + sizes[rank])
    if case.endswith("-ddp"):
        # DDP refuses nn.SyncBatchNorm in a CPU model: the library's own conversion.
        model = sync_bn.convert_sync_batchnorm(model)
        # DDP leaves every rank the mean of the processes' gradients: summed over the ranks
        # (the test's comparison) it is the sum of their shares, as without DDP.
        result = step(model, x[part], grad[part], nn.parallel.DistributedDataParallel(model))
    else:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the standard call
        run = torch.compile(model, backend="aot_eager") if case.endswith("-compiled") else None
        result = step(model, x[part], grad[part], run)
    torch.save(result, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
