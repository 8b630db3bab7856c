"""Inference folding: BatchNorm (running statistics) folded into the convolution before or
after it, and the folded weights cached while their sources are unchanged.

In eval, ``conv -> BatchNorm -> [+ residual] -> [ReLU]`` is one affine map per output
channel after the convolution, so it folds into the convolution's weight and bias; for the
fused (2+1)D block the whole run becomes one ``r2p1d::fused_eval`` call, its residual add
and ReLU done in the temporal conv's output loop (docs/inference.md). :func:`conv_bn` is
that rule for any (conv, BatchNorm, ReLU) triple of a network; where it does not apply
(training, BatchNorm without running statistics, hooks, ONNX export, other module types)
it runs the modules one by one, so the result is always the modules' own.

Folding costs a pass over every weight (measured at ~4 ms per call for an R(2+1)D-18
conv5_x block on 2 CPU cores, as long as its kernel at batch 1), so the folded tensors are
kept in a :class:`FoldCache` and reused while the source tensors are the same objects with
the same storage and version counter. Every in-place change through PyTorch (optimizer
steps, ``load_state_dict``, ``with torch.no_grad(): p.mul_(2)``) bumps the version and
refolds; writes through ``.data`` bypass version counters (as they bypass autograd's own
checks) and are not seen: call ``model.train()`` (which empties the caches) after such edits.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

_BATCH_NORMS = (nn.BatchNorm3d, nn.SyncBatchNorm)


def _signature(t: Optional[Tensor]):
    if t is None:
        return None
    return (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape), tuple(t.stride()))


class FoldCache:
    """One cached value computed from a list of tensors (and hashable extras), recomputed
    when any source changes. Holds a reference to each source's data while cached, so a
    freed source's address cannot come back as a false match. Safe for threads running the
    same model at once: the entry (key, value, sources) is replaced as one object, and a
    reader keeps the entry it found. Empty after deepcopy and pickling (a cache is never
    saved with a model)."""

    def __init__(self) -> None:
        self._entry = None

    def clear(self) -> None:
        self._entry = None

    @property
    def value(self) -> Optional[tuple]:
        entry = self._entry
        return entry[1] if entry is not None else None

    def get(self, sources: Sequence[Optional[Tensor]], extra: tuple, compute: Callable[[], tuple]) -> tuple:
        if not _cacheable(sources):
            return compute()
        key = (tuple(_signature(t) for t in sources), extra)
        entry = self._entry
        if entry is not None and entry[0] == key:
            return entry[1]
        self._entry = None  # the old folds' memory is free before the new ones are made
        value = tuple(v.detach() if v is not None else None for v in compute())
        self._entry = (key, value, [t.detach() for t in sources if t is not None])
        return value

    def __deepcopy__(self, memo) -> "FoldCache":
        return FoldCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._entry = None


def _cacheable(sources: Sequence[Optional[Tensor]]) -> bool:
    """Reuse is safe and useful only outside autograd (folded tensors in a graph must be
    recomputed for their gradients) and outside tracing/compiling (where the fold belongs
    in the graph); inference tensors have no version counter."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    live = [t for t in sources if t is not None]
    if any(t.is_inference() for t in live):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in live))


def cache_of(module: nn.Module) -> FoldCache:
    """The module's fold cache (created on first use: modules pickled before it existed
    have none)."""
    cache = module.__dict__.get("_fold_cache")
    if cache is None:
        cache = module.__dict__["_fold_cache"] = FoldCache()
    return cache


def clear_caches(module: nn.Module) -> None:
    """Empty the fold caches of ``module`` and its submodules (``train()`` does this)."""
    for m in module.modules():
        cache = m.__dict__.get("_fold_cache")
        if cache is not None:
            cache.clear()


# ---------------------------------------------------------------------------- the folds
def bn_scale_shift(bn: nn.Module, var: Tensor) -> Tuple[Tensor, Tensor]:
    """BatchNorm as z = (y - mean)*scale + shift: scale = gamma/sqrt(var+eps) and shift =
    beta (differentiable in var, gamma and beta), in float32 at least: a module cast to
    bfloat16/float16 keeps its BatchNorm parameters and running statistics in that dtype,
    and rsqrt(var + eps) in it would round the scale by up to 0.4%."""
    dtype = torch.float64 if var.dtype == torch.float64 else torch.float32
    scale = torch.rsqrt(var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = bn.bias.to(dtype) if bn.bias is not None else torch.zeros_like(scale)
    return scale, shift


def fold_into(weight: Tensor, bias: Optional[Tensor], mean: Tensor, scale: Tensor,
              shift: Tensor) -> Tuple[Tensor, Tensor]:
    """Weight and bias of a conv with the per-output-channel map (v - mean)*scale + shift
    after it: w*scale and (b - mean)*scale + shift, computed in the scale's precision, cast
    to the weight's dtype."""
    w = (weight.to(scale.dtype) * scale.view(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
    mean = mean.to(scale.dtype)
    centred = -mean if bias is None else bias.to(scale.dtype) - mean
    return w, (centred * scale + shift).to(weight.dtype)


def fold_after(weight: Tensor, bias: Optional[Tensor], bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """Weight and bias of conv followed by BatchNorm ``bn`` in eval (running statistics)."""
    scale, shift = bn_scale_shift(bn, bn.running_var)
    return fold_into(weight, bias, bn.running_mean, scale, shift)


def bn_sources(bn: Optional[nn.Module]) -> List[Optional[Tensor]]:
    if bn is None:
        return []
    return [bn.running_mean, bn.running_var, bn.weight, bn.bias]


# ---------------------------------------------------------------------------- when it applies
def _hooked(*modules: Optional[nn.Module]) -> bool:
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                  or m._backward_pre_hooks)
               for m in modules)


def bn_folds(bn: nn.Module) -> bool:
    """A BatchNorm that normalises with running statistics (eval with track_running_stats)."""
    return type(bn) in _BATCH_NORMS and not bn.training and bn.running_mean is not None


def _plain_conv3d(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv3d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def folds(conv: nn.Module, bn: nn.Module, relu: Optional[nn.Module], x: Tensor) -> bool:
    """Whether conv -> bn -> [+ residual] -> [relu] on x can run folded: eval BatchNorm(s)
    with running statistics, a plain ReLU, no hooks to honour, not an ONNX export (there
    the graph keeps the standard modules and the runtime folds them), a non-empty 5-D batch."""
    from .module import SpatioTemporalConv  # module.py imports this file
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
    weight, one batched GEMM with the bias: half of oneDNN's time for R(2+1)D-18's three
    shortcuts at batch 4 x 8x112x112 (3.4 -> 1.8 ms; bench/NOTES.md), which reorders
    NCDHW data to its blocked layout and back."""
    xs = x[:, :, ::stride[0], ::stride[1], ::stride[2]]
    n, c, o = x.shape[0], x.shape[1], w.shape[0]
    out = torch.baddbmm(b.view(1, o, 1), w.view(o, c).expand(n, o, c), xs.reshape(n, c, -1))
    return out.view(n, o, *xs.shape[2:])


def _conv3d_folded(conv: nn.Conv3d, bn: nn.Module, x: Tensor, residual: Optional[Tensor],
                   relu: bool) -> Tensor:
    """A plain Conv3d with the BatchNorm after it folded in (a shortcut's 1x1x1 conv)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    sources = [conv.weight, conv.bias, *bn_sources(bn)]

    def compute():
        w, b = fold_after(conv.weight, conv.bias, bn)
        return (w, b) if dtype is None else (w.to(dtype), b.to(dtype))

    w, b = cache_of(conv).get(sources, (id(bn), bn.eps, dtype), compute)
    x = x if dtype is None else x.to(dtype)
    if _pointwise(conv) and x.device.type == "cpu":
        out = _pointwise_cpu(x, w, b, conv.stride)
    else:
        out = F.conv3d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor, relu: Optional[nn.Module] = None,
            residual: Optional[Tensor] = None) -> Tensor:
    """``relu(bn(conv(x)) + residual)`` (residual and relu optional): folded into one op
    where :func:`folds` says it can be, otherwise the modules themselves in that order."""
    if folds(conv, bn, relu, x):
        from .module import SpatioTemporalConv
        if isinstance(conv, SpatioTemporalConv):
            return conv.fused_inference(x, post=bn, residual=residual, relu=relu is not None)
        return _conv3d_folded(conv, bn, x, residual, relu is not None)
    out = bn(conv(x))
    if residual is not None:
        out = out + residual
    return relu(out) if relu is not None else out
