"""Inference folding, the math and the cache: BatchNorm (running statistics) folded into the
convolution before or after it, and the folded weights cached while their sources are
unchanged. A leaf: torch only. Which module runs folded, and when, is decided one level up
(r2p1d_ext/module.py for the block, r2p1d_ext/conv_bn.py for a network's conv/BatchNorm/ReLU
runs).

In eval, ``conv -> BatchNorm -> [+ residual] -> [ReLU]`` is one affine map per output
channel after the convolution, so it folds into the convolution's weight and bias.

Folding costs a pass over every weight (for an R(2+1)D-18 conv5_x block about as long as
its kernel at batch 1: bench/NOTES.md), so the folded tensors are kept in a
:class:`FoldCache` and reused while the source tensors are the same objects with the same
storage and version counter. Every in-place change through PyTorch (optimizer
steps, ``load_state_dict``, ``with torch.no_grad(): p.mul_(2)``) bumps the version and
refolds; writes through ``.data`` bypass version counters (as they bypass autograd's own
checks) and are not seen: call ``model.train()`` (which empties the caches) after such edits.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn



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
