"""The network-level fold: ``relu(bn(conv(x)) + residual)`` run as one op in eval.

For the fused (2+1)D block the whole run becomes one ``r2p1d::fused_eval`` call, its residual
add and ReLU done in the temporal conv's output loop (docs/inference.md); a plain 1x1x1
Conv3d (a residual shortcut) folds its BatchNorm too. :func:`conv_bn` is that rule for any
(conv, BatchNorm, ReLU) triple of a network; where it does not apply (training, BatchNorm
without running statistics, hooks, ONNX export, other module types) it runs the modules one
by one, so the result is always the modules' own. :class:`ConvBN` is the
``nn.Sequential(conv, BatchNorm3d[, ReLU])`` that runs through it; the networks
(r2p1d_ext/models/) and fuse() build their eval paths from these two.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from . import folding, sync_bn
from .module import SpatioTemporalConv

# The BatchNorm types a block or a ConvBN holds (exactly these: a subclass may compute
# something else).
BATCH_NORMS = (nn.BatchNorm3d, nn.SyncBatchNorm, sync_bn.SyncBatchNorm3d)


def _hooked(*modules: Optional[nn.Module]) -> bool:
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                  or m._backward_pre_hooks)
               for m in modules)


def bn_folds(bn: nn.Module) -> bool:
    """A BatchNorm that normalises with running statistics (eval with track_running_stats)."""
    return type(bn) in BATCH_NORMS and not bn.training and bn.running_mean is not None


def _plain_conv3d(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv3d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def folds(conv: nn.Module, bn: nn.Module, relu: Optional[nn.Module], x: Tensor) -> bool:
    """Whether conv -> bn -> [+ residual] -> [relu] on x can run folded: eval BatchNorm(s)
    with running statistics, a plain ReLU, no hooks to honour, not an ONNX export (there
    the graph keeps the standard modules and the runtime folds them), a non-empty 5-D batch."""
    if torch.onnx.is_in_onnx_export() or x.dim() != 5 or x.shape[0] == 0:
        return False
    if relu is not None and type(relu) is not nn.ReLU:
        return False
    if not bn_folds(bn) or _hooked(conv, bn, relu):
        return False
    if getattr(conv, "out_channels", None) != bn.num_features:
        return False  # the modules one by one raise the mismatch (a fold would broadcast it)
    if isinstance(conv, SpatioTemporalConv):
        return conv.folds_batchnorm()
    return _plain_conv3d(conv)


def _pointwise(conv: nn.Conv3d) -> bool:
    return (conv.kernel_size == (1, 1, 1) and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1)
            and conv.groups == 1)


def _pointwise_cpu(x: Tensor, w: Tensor, b: Tensor, stride) -> Tensor:
    """A 1x1x1 convolution (a residual shortcut) on the CPU as the strided input times the
    weight, one batched GEMM with the bias: about half of oneDNN's time for R(2+1)D-18's
    shortcuts (bench/NOTES.md), which reorders NCDHW data to its blocked layout and back."""
    xs = x[:, :, ::stride[0], ::stride[1], ::stride[2]]
    n, c, o = x.shape[0], x.shape[1], w.shape[0]
    out = torch.baddbmm(b.view(1, o, 1), w.view(o, c).expand(n, o, c), xs.reshape(n, c, -1))
    return out.view(n, o, *xs.shape[2:])


def _conv3d_folded(conv: nn.Conv3d, bn: nn.Module, x: Tensor, residual: Optional[Tensor],
                   relu: bool) -> Tensor:
    """A plain Conv3d with the BatchNorm after it folded in (a shortcut's 1x1x1 conv)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    sources = [conv.weight, conv.bias, *folding.bn_sources(bn)]

    def compute():
        w, b = folding.fold_after(conv.weight, conv.bias, bn)
        return (w, b) if dtype is None else (w.to(dtype), b.to(dtype))

    w, b = folding.cache_of(conv).get(sources, (id(bn), bn.eps, dtype), compute)
    x = x if dtype is None else x.to(dtype)
    if _pointwise(conv) and x.device.type == "cpu":
        out = _pointwise_cpu(x, w, b, conv.stride)
    else:
        out = F.conv3d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


def _batch_norm(bn: nn.Module, x: Tensor) -> Tensor:
    """bn(x); an ``nn.SyncBatchNorm`` synchronizing on a device torch's has no kernel for (the
    CPU) runs r2p1d_ext.sync_bn's, so that ``--sync-bn`` trains the same on every device."""
    group = sync_bn.process_group(bn)
    if group is None or x.device.type == "cuda":
        return bn(x)
    return sync_bn.batch_norm(bn, x, group)


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor, relu: Optional[nn.Module] = None,
            residual: Optional[Tensor] = None) -> Tensor:
    """``relu(bn(conv(x)) + residual)`` (residual and relu optional): folded into one op
    where :func:`folds` says it can be, otherwise the modules themselves in that order."""
    if folds(conv, bn, relu, x):
        if isinstance(conv, SpatioTemporalConv):
            return conv.fused_inference(x, post=bn, residual=residual, relu=relu is not None)
        return _conv3d_folded(conv, bn, x, residual, relu is not None)
    out = _batch_norm(bn, conv(x))
    if residual is not None:
        out = out + residual
    return relu(out) if relu is not None else out


class ConvBN(nn.Sequential):
    """``nn.Sequential(conv, BatchNorm3d[, ReLU])`` that runs folded in eval (one op for a
    fused block: :func:`conv_bn`). The same children and state_dict
    names as the plain Sequential; fuse() makes torchvision's such Sequentials this."""

    def forward(self, x: Tensor, residual: Optional[Tensor] = None,
                relu: Optional[nn.Module] = None) -> Tensor:
        """``relu(self(x) + residual)``; the ReLU is the Sequential's own third module, or
        ``relu`` (a residual block's, applied after the add)."""
        if len(self) not in (2, 3) or (len(self) == 3 and relu is not None):
            out = super().forward(x)
            out = out + residual if residual is not None else out
            return relu(out) if relu is not None else out
        return conv_bn(self[0], self[1], x, self[2] if len(self) == 3 else relu, residual)
