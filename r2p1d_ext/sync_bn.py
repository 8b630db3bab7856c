"""Synchronized BatchNorm statistics across processes, for the fused blocks and for the
networks' standalone BatchNorm layers (docs/training.md, "Several processes").

A module whose BatchNorm is an ``nn.SyncBatchNorm`` (``nn.SyncBatchNorm.convert_sync_batchnorm``
makes it so, ``fuse()`` keeps it) normalises, in training, with the statistics of the whole
batch over its process group, as ``nn.SyncBatchNorm`` does:

- forward: each process's per-channel (count, mean, biased variance) are all-gathered and
  merged in rank order, in float64 (:func:`merge_batch_stats`), so every rank holds the same
  bits; the running statistics update with the global count;
- backward: the gradients reaching the merged mean and variance are all-reduced (summed),
  then mapped back onto each process's own mean and variance, which the block's spatial
  backward (or autograd, for a standalone layer) turns into input and weight gradients.

Processes may hold different batch sizes, including 0 clips (they still take part in every
collective). Evaluation, a world of one process and a BatchNorm that is not an
``nn.SyncBatchNorm`` use no collective at all. The collectives are torch's functional ones
(``torch.distributed._functional_collectives``): gloo on the CPU, NCCL on CUDA.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import ops


class SyncBatchNorm3d(nn.BatchNorm3d):
    """A BatchNorm3d whose training statistics are those of every process of
    ``process_group`` (default: the whole world), on any device. The CPU's counterpart of
    ``nn.SyncBatchNorm``, which has no CPU kernel and which DistributedDataParallel refuses
    in a CPU model: :func:`convert_sync_batchnorm` puts it in place of a model's BatchNorm
    layers, fused blocks included. The same parameters, buffers and state_dict as
    nn.BatchNorm3d."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        group = process_group(self)
        if group is None:
            return super().forward(x)
        self._check_input_dim(x)
        return batch_norm(self, x, group)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every nn.BatchNorm3d and nn.SyncBatchNorm (a fused block's own
    included) replaced by a :class:`SyncBatchNorm3d` holding the same parameters and
    buffers: ``nn.SyncBatchNorm.convert_sync_batchnorm`` for CPU models and DDP on the CPU."""
    out = module
    if isinstance(module, (nn.BatchNorm3d, nn.SyncBatchNorm)) and not isinstance(module, SyncBatchNorm3d):
        out = SyncBatchNorm3d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def process_group(bn: nn.Module):
    """The process group ``bn`` synchronizes over in training, or None when there is nothing
    to synchronize: neither an ``nn.SyncBatchNorm`` nor a :class:`SyncBatchNorm3d`, eval,
    torch.distributed not initialized, or a group of one process."""
    if not isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm3d)) or not bn.training:
        return None
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _all_gather(t: Tensor, group) -> Tensor:
    """[world, *t.shape]: every rank's t, in rank order."""
    import torch.distributed._functional_collectives as funcol

    # all_gather_single from torch 2.14 (all_gather_tensor, its older name, warns there)
    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
    out = gather(t.contiguous(), 0, group)
    return funcol.wait_tensor(out).view(-1, *t.shape)


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    import torch.distributed._functional_collectives as funcol

    return funcol.wait_tensor(funcol.all_reduce(t.contiguous(), "sum", group))


class _MergeStats(torch.autograd.Function):
    """(local mean, local biased var, local count) -> (global mean, global biased var,
    global count). The merge, over [world, 3, C] gathered in rank order, in float64:
    C = sum c_r, mean = sum c_r m_r / C, var = sum c_r (v_r + (m_r - mean)^2) / C. Backward,
    with G the gradients reaching (mean, var) summed over the ranks:
    d/dm_r = c_r/C (G_mean + 2 (m_r - mean) G_var), d/dv_r = c_r/C G_var."""

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, count: Tensor, group):
        local = torch.stack([count.to(torch.float64).expand_as(mean), mean.double(), var.double()])
        every = _all_gather(local, group)
        counts, means, variances = every[:, 0], every[:, 1], every[:, 2]
        total = counts.sum(0)
        safe = total.clamp_min(1.0)
        g_mean = (counts * means).sum(0) / safe
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / safe
        ctx.group, ctx.dtypes = group, (mean.dtype, var.dtype)
        ctx.save_for_backward(local[0], local[1], total, g_mean)
        count_out = total[0].to(torch.int64)
        ctx.mark_non_differentiable(count_out)
        return g_mean.to(mean.dtype), g_var.to(var.dtype), count_out

    @staticmethod
    def backward(ctx, grad_mean: Optional[Tensor], grad_var: Optional[Tensor], _):
        count, mean, total, g_mean = ctx.saved_tensors
        grads = torch.stack([g.double() if g is not None else torch.zeros_like(mean)
                             for g in (grad_mean, grad_var)])
        g = _all_reduce_sum(grads, ctx.group)
        share = count / total.clamp_min(1.0)
        d_mean = share * (g[0] + 2.0 * (mean - g_mean) * g[1])
        d_var = share * g[1]
        return d_mean.to(ctx.dtypes[0]), d_var.to(ctx.dtypes[1]), None, None


def merge_batch_stats(mean: Tensor, var: Tensor, count: int, group) -> Tuple[Tensor, Tensor, int]:
    """The batch statistics of all processes of ``group`` from each one's per-channel
    ``mean``, biased ``var`` and value ``count`` (differentiable in mean and var): every
    rank gets the same global (mean, var, count)."""
    merged_mean, merged_var, total = _MergeStats.apply(
        mean, var, torch.tensor(float(count), device=mean.device, dtype=torch.float64), group)
    return merged_mean, merged_var, int(total.item())


def batch_norm(bn: nn.SyncBatchNorm, x: Tensor, group) -> Tensor:
    """``bn(x)`` in training, synchronized over ``group`` with plain tensor operations: the
    standalone BatchNorm layers on devices where torch's ``nn.SyncBatchNorm`` has no kernel
    (the CPU). Statistics in float32 at least, like nn.BatchNorm3d's."""
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // x.shape[1] if x.dim() > 1 else 0
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(stats_dtype)
    if count > 0:
        mean = xs.mean(dims)
        var = (xs - mean.view(1, -1, *[1] * (x.dim() - 2))).square().mean(dims)
    else:  # no values here: this process only takes part in the merge
        mean = xs.sum(dims)
        var = mean.clone()
    g_mean, g_var, total = merge_batch_stats(mean, var, count, group)
    if total <= 1:
        raise ValueError(f"{type(bn).__name__}: expected more than 1 value per channel when training, "
                         f"got {total} over the process group")
    if bn.track_running_stats:
        momentum = bn.momentum
        ops.update_running_stats(bn.running_mean, bn.running_var, bn.num_batches_tracked,
                                 g_mean.detach(), g_var.detach(), total, momentum)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = (xs - g_mean.view(shape)) * torch.rsqrt(g_var.view(shape) + bn.eps)
    if bn.weight is not None:
        out = out * bn.weight.to(stats_dtype).view(shape) + bn.bias.to(stats_dtype).view(shape)
    return out.to(x.dtype)
