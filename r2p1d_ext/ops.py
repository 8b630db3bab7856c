"""The r2p1d operators: Python wrappers, fake (meta) kernels for torch.compile and
autograd formulas. The kernels themselves are in csrc/ (one schema file, CPU and CUDA
implementations registered per dispatch key); autograd lives here, apart from them.

Ops (all tensors NCDHW):
  spatial_conv_stats(x, w_s, b_s, stride_hw, padding_hw) -> (y, mean, var)
  temporal_conv_bnrelu(y, mean, scale, shift, w_t, b_t, stride_t, padding_t) -> out
  fused_eval(x, w_s_folded, b_s_folded, w_t, b_t, stride, padding, residual=None, relu=False) -> out
  update_running_stats(running_mean!, running_var!, num_batches_tracked!, mean, var, count, momentum)
and the backward ops spatial_conv_backward / temporal_conv_bnrelu_backward; beside the block,
  normalize_clips(clips_uint8 NTHWC, mean, std, dtype) -> NCTHW clips (the data's last step).

Layout of the results: on the CPU every 5-D result is contiguous (NCDHW); on CUDA every
5-D result is channels_last_3d (NDHWC, the tensor-core kernels' native layout), whichever
kernel family ran (R2P1D_CUDA_KERNELS). The fake kernels below state the same rule.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _extension
from ._args import KINETICS_MEAN, KINETICS_STD, output_size

_C = _extension.load()  # importing it runs the TORCH_LIBRARY registrations
_ops = torch.ops.r2p1d


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def result_format(device: torch.device) -> torch.memory_format:
    """The memory format of the ops' 5-D results on `device`."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format


def _empty5d(like: Tensor, shape) -> Tensor:
    """A 5-D result of `like`'s dtype and device, in the ops' layout for that device."""
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=result_format(like.device))


# ---------------------------------------------------------------------------- wrappers
def spatial_conv_stats(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                       padding: List[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """y = conv3d(x, weight, bias, stride (1,*stride), padding (0,*padding)) and the
    per-channel batch mean and biased variance of y."""
    return _ops.spatial_conv_stats(x, weight, bias, stride, padding)


def temporal_conv_bnrelu(y: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor,
                         bias: Optional[Tensor], stride: int, padding: int) -> Tensor:
    """conv3d(relu((y - mean)*scale + shift), weight, bias, stride (stride,1,1),
    padding (padding,0,0)), zero padding applied after the activation. BatchNorm is
    mean, scale = gamma/sqrt(var+eps), shift = beta."""
    return _ops.temporal_conv_bnrelu(y, mean, scale, shift, weight, bias, stride, padding)


def fused_eval(x: Tensor, spatial_weight: Tensor, spatial_bias: Optional[Tensor],
               temporal_weight: Tensor, temporal_bias: Optional[Tensor], stride: List[int],
               padding: List[int], residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """Inference block with BatchNorm folded into the spatial weight and bias:
    temporal(relu(spatial(x))), then ``+ residual`` (a tensor of the output's shape) and
    ``relu`` if given, in the temporal conv's output loop (a residual network's add and
    ReLU; a BatchNorm after the block folds into the temporal weight and bias)."""
    return _ops.fused_eval(x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                           stride, padding, residual, relu)


def update_running_stats(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor,
                         mean: Tensor, var: Tensor, count: int, momentum: Optional[float]) -> None:
    """nn.BatchNorm's running-statistics update, in place."""
    _ops.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count,
                              momentum)


def normalize_clips(clips: Tensor, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 RGB clips as the dataset gives them, (N, T, H, W, C) or one (T, H, W, C), to what
    the network takes: (N, C, T, H, W) / (C, T, H, W) of `dtype`, (x - 255 mean) / (255 std)
    per channel, in one pass on the clips' device. The result's memory is the input's (a
    batch comes out channels_last_3d); ``.contiguous()`` gives NCTHW."""
    return _ops.normalize_clips(clips, [float(m) for m in mean], [float(s) for s in std], dtype)


# ---------------------------------------------------------------------------- fake kernels
# The fake kernels check what the C++ kernels check (csrc/checks.h), with the same messages,
# so that a bad call fails as clearly under torch.compile and torch.export as in eager.
def _check(cond, *parts) -> None:
    torch._check_value(cond, lambda: "r2p1d: " + "".join(str(p) for p in parts))


def _check_like(ref: Tensor, t: Optional[Tensor], name: str, what: str) -> None:
    if t is None:
        return
    _check(t.device == ref.device, f"expected {name} on {ref.device} ({what}'s device), but it is on {t.device}")
    _check(t.dtype == ref.dtype, f"expected {name} of dtype {ref.dtype} ({what}'s dtype), but got {t.dtype}")


def _check_input5d(x: Tensor, name: str) -> None:
    _check(x.dim() == 5, f"expected {name} to be a 5-D (N, C, T, H, W) tensor, but got {x.dim()}-D with shape ",
           tuple(x.shape))
    _check(x.is_floating_point(), f"expected {name} to be a floating-point tensor, but got dtype {x.dtype}")


def _check_out_size(size, k, s, p, dim):
    _check(s >= 1 and p >= 0, f"expected stride >= 1 and padding >= 0 along {dim}, but got stride {s} and padding {p}")
    _check(size + 2 * p >= k, f"input {dim} is {size} ({size + 2 * p} with padding), smaller than the kernel size {k}")


def _check_spatial(x, weight, bias, stride, padding) -> None:
    _check_input5d(x, "input")
    _check_like(x, weight, "spatial weight", "the input")
    _check(weight.dim() == 5 and weight.shape[2] == 1,
           "expected a spatial weight of shape (M, C, 1, kh, kw), but got ", tuple(weight.shape))
    _check(weight.shape[1] == x.shape[1], f"expected input with {weight.shape[1]} channels (the spatial "
           f"weight's), but got {x.shape[1]} channels")
    _check(len(stride) == 2 and len(padding) == 2,
           f"expected 2 spatial strides and paddings, but got {len(stride)} and {len(padding)}")
    for dim, size, k, s, p in zip(("height", "width"), x.shape[3:], weight.shape[3:], stride, padding):
        _check_out_size(size, k, s, p, dim)
    _check_like(x, bias, "spatial bias", "the input")
    _check(bias is None or tuple(bias.shape) == (weight.shape[0],),
           f"expected spatial bias of shape [{weight.shape[0]}], but got ", None if bias is None else tuple(bias.shape))


def _check_temporal_weight(ref, mid, t, weight, bias, stride, padding) -> None:
    _check_like(ref, weight, "temporal weight", "the input")
    _check(weight.dim() == 5 and weight.shape[3] == 1 and weight.shape[4] == 1,
           "expected a temporal weight of shape (O, M, kt, 1, 1), but got ", tuple(weight.shape))
    _check(weight.shape[1] == mid, f"expected an intermediate with {weight.shape[1]} channels (the temporal "
           f"weight's), but got {mid}")
    _check_out_size(t, weight.shape[2], stride, padding, "time")
    _check_like(ref, bias, "temporal bias", "the input")


def _check_vectors(ref: Tensor, n: int, **vectors: Optional[Tensor]) -> None:
    """Per-channel vectors: floating point, on ref's device, n values (csrc/checks.h's
    check_channel_vector)."""
    for name, v in vectors.items():
        if v is None:
            continue
        _check(v.device == ref.device, f"expected {name} on {ref.device} (the input's device), but it is on {v.device}")
        _check(v.is_floating_point(), f"expected {name} to be a floating-point tensor, but got dtype {v.dtype}")
        _check(v.dim() == 1 and v.shape[0] == n,
               f"expected {name} to be a vector of {n} per-channel values, but got shape ", tuple(v.shape))


@torch.library.register_fake("r2p1d::spatial_conv_stats")
def _spatial_conv_stats_fake(x, weight, bias, stride, padding):
    _check_spatial(x, weight, bias, stride, padding)
    n, _, t, h, w = x.shape
    m, _, _, kh, kw = weight.shape
    y = _empty5d(x, (n, m, t, output_size(h, kh, stride[0], padding[0]),
                     output_size(w, kw, stride[1], padding[1])))
    stats = x.new_empty((m,), dtype=_stats_dtype(x.dtype))
    return y, stats, torch.empty_like(stats)


@torch.library.register_fake("r2p1d::spatial_conv_backward")
def _spatial_conv_backward_fake(grad_y, x, weight, y, mean, grad_mean, grad_var, stride, padding,
                                output_mask):
    _check_spatial(x, weight, None, stride, padding)
    _check(grad_y.shape == y.shape, f"expected grad_y and y of the same shape, but got {tuple(grad_y.shape)} "
           f"and {tuple(y.shape)}")
    _check_like(x, grad_y, "grad_y", "the input")
    _check_like(x, y, "y", "the input")
    _check_vectors(x, weight.shape[0], mean=mean, grad_mean=grad_mean, grad_var=grad_var)
    return (_empty5d(x, x.shape) if output_mask[0] else None,
            _empty5d(weight, weight.shape) if output_mask[1] else None,
            x.new_empty((weight.shape[0],)) if output_mask[2] else None)


@torch.library.register_fake("r2p1d::temporal_conv_bnrelu")
def _temporal_conv_bnrelu_fake(y, mean, scale, shift, weight, bias, stride, padding):
    _check_input5d(y, "intermediate y")
    _check_temporal_weight(y, y.shape[1], y.shape[2], weight, bias, stride, padding)
    _check_vectors(y, y.shape[1], mean=mean, scale=scale, shift=shift)
    n, _, t, h, w = y.shape
    return _empty5d(y, (n, weight.shape[0], output_size(t, weight.shape[2], stride, padding), h, w))


@torch.library.register_fake("r2p1d::temporal_conv_bnrelu_backward")
def _temporal_conv_bnrelu_backward_fake(grad_out, y, mean, scale, shift, weight, stride, padding,
                                        output_mask):
    _check_input5d(y, "intermediate y")
    _check_temporal_weight(y, y.shape[1], y.shape[2], weight, None, stride, padding)
    _check_vectors(y, y.shape[1], mean=mean, scale=scale, shift=shift)
    n, _, t, h, w = y.shape
    out_shape = (n, weight.shape[0], output_size(t, weight.shape[2], stride, padding), h, w)
    _check(grad_out.dim() == 5 and tuple(grad_out.shape) == out_shape,
           f"expected grad_out of shape {list(out_shape)}, but got {list(grad_out.shape)}")
    _check_like(y, grad_out, "grad_out", "the input")
    return (_empty5d(y, y.shape) if output_mask[0] else None,
            torch.empty_like(mean) if output_mask[1] else None,
            torch.empty_like(scale) if output_mask[2] else None,
            torch.empty_like(shift) if output_mask[3] else None,
            _empty5d(weight, weight.shape) if output_mask[4] else None,
            y.new_empty((weight.shape[0],)) if output_mask[5] else None)


@torch.library.register_fake("r2p1d::fused_eval")
def _fused_eval_fake(x, spatial_weight, spatial_bias, temporal_weight, temporal_bias, stride,
                     padding, residual=None, relu=False):
    _check(len(stride) == 3 and len(padding) == 3,
           f"expected 3 strides and 3 paddings (t, h, w), but got {len(stride)} and {len(padding)}")
    _check_spatial(x, spatial_weight, spatial_bias, stride[1:], padding[1:])
    _check_temporal_weight(x, spatial_weight.shape[0], x.shape[2], temporal_weight, temporal_bias, stride[0],
                           padding[0])
    n, _, t, h, w = x.shape
    _, _, _, kh, kw = spatial_weight.shape
    o, _, kt, _, _ = temporal_weight.shape
    shape = (n, o, output_size(t, kt, stride[0], padding[0]), output_size(h, kh, stride[1], padding[1]),
             output_size(w, kw, stride[2], padding[2]))
    if residual is not None:
        _check_like(x, residual, "residual", "input")
        _check(tuple(residual.shape) == shape,
               f"expected a residual of the output's shape {list(shape)}, but got {list(residual.shape)}")
    return _empty5d(x, shape)


@torch.library.register_fake("r2p1d::update_running_stats")
def _update_running_stats_fake(running_mean, running_var, num_batches_tracked, mean, var, count,
                               momentum):
    _check(running_mean.is_floating_point(),
           f"expected running_mean to be a floating-point tensor, but got dtype {running_mean.dtype}")
    n = running_mean.numel()
    _check_vectors(running_mean, n, running_var=running_var, **{"batch mean": mean, "batch var": var})
    _check_like(running_mean, running_var, "running_var", "the input")
    _check(num_batches_tracked.device == running_mean.device,
           f"expected num_batches_tracked on {running_mean.device} (the input's device), but it is on "
           f"{num_batches_tracked.device}")
    _check(num_batches_tracked.numel() == 1 and num_batches_tracked.dtype == torch.int64,
           "expected num_batches_tracked to be a one-element int64 tensor, got "
           f"{num_batches_tracked.dtype} of shape {tuple(num_batches_tracked.shape)}")
    _check(count > 1, f"expected more than 1 value per channel when training, got {count}")
    return None


@torch.library.register_fake("r2p1d::normalize_clips")
def _normalize_clips_fake(clips, mean, std, dtype):
    _check(clips.dtype == torch.uint8, f"expected uint8 clips, but got {clips.dtype}")
    _check(clips.dim() in (4, 5), "expected clips of shape (T, H, W, C) or (N, T, H, W, C), but got "
           f"{list(clips.shape)}")
    c = clips.shape[-1]
    _check(1 <= c <= 4, f"expected 1 to 4 channels last (T, H, W, C), but got {c} (shape {list(clips.shape)})")
    _check(len(mean) == c and len(std) == c,
           f"expected one mean and one std per channel ({c}), but got {len(mean)} and {len(std)}")
    _check(dtype.is_floating_point, f"expected a floating-point dtype, but got {dtype}")
    _check(all(s > 0 for s in std), f"expected std > 0, but got {list(std)}")
    out = torch.empty(clips.shape, dtype=dtype, device=clips.device)
    return out.permute(0, 4, 1, 2, 3) if clips.dim() == 5 else out.permute(3, 0, 1, 2)


# ---------------------------------------------------------------------------- autograd
class OpSet:
    """The block's ops of one op namespace, each called with `extra` keyword arguments after
    its own: ``torch.ops.r2p1d`` (none), or the tensor-core emulator's
    ``torch.ops.r2p1d_tc_emulate``, whose ops take the plan (``sm_count``, ``tile``) after the
    r2p1d op's arguments (csrc/emulate/tc_emulate.cpp). The autograd formulas below call the
    backward ops through one, so that both namespaces share them."""

    def __init__(self, namespace: str = "r2p1d", **extra):
        self.namespace, self.extra = namespace, extra
        self._ops = getattr(torch.ops, namespace)

    def __getattr__(self, name: str):
        op = getattr(self._ops, name)
        return functools.partial(op, **self.extra) if self.extra else op


def _spatial_backward(ctx, grad_y, grad_mean, grad_var):
    x, weight, y, mean = ctx.saved_tensors
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    # Statistics that no loss uses (eval-mode use of the op) have no gradient: passing
    # None keeps their share, and with it y of other samples, out of grad_y.
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    grad_x, grad_w, grad_b = ctx.ops.spatial_conv_backward(
        grad_y, x, weight, y, mean, grad_mean, grad_var, ctx.stride, ctx.padding, mask)
    return (grad_x, grad_w, grad_b, None, None) + (None,) * len(ctx.ops.extra)


def _temporal_backward(ctx, grad_out):
    y, mean, scale, shift, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], need[3], need[4], ctx.has_bias and need[5]]
    grads = ctx.ops.temporal_conv_bnrelu_backward(grad_out, y, mean, scale, shift, weight, ctx.stride,
                                                  ctx.padding, mask)
    return (*grads, None, None) + (None,) * len(ctx.ops.extra)


def fused_eval_grads(ops, grad_out: Tensor, x: Tensor, spatial_weight: Tensor,
                     spatial_bias: Optional[Tensor], temporal_weight: Tensor, has_temporal_bias: bool,
                     stride: List[int], padding: List[int], needs: List[bool]):
    """Gradients of fused_eval (BatchNorm already folded): the spatial output y is recomputed,
    then the temporal backward with the identity BatchNorm (mean 0, scale 1, shift 0: its
    ReLU mask is y > 0) and the spatial backward with no statistics' share. `ops` is an
    OpSet; `needs` the inputs' flags (x, spatial weight, spatial bias, temporal weight,
    temporal bias)."""
    y, _, _ = ops.spatial_conv_stats(x, spatial_weight, spatial_bias, stride[1:], padding[1:])
    zeros = torch.zeros(y.shape[1], dtype=_stats_dtype(y.dtype), device=y.device)
    ones = torch.ones_like(zeros)
    grad_y, _, _, _, grad_wt, grad_bt = ops.temporal_conv_bnrelu_backward(
        grad_out, y, zeros, ones, zeros, temporal_weight, stride[0], padding[0],
        [any(needs[:3]), False, False, False, needs[3], has_temporal_bias and needs[4]])
    grad_x = grad_ws = grad_bs = None
    if any(needs[:3]):
        # No statistics' share (no grad_mean, grad_var): nothing of another sample enters a
        # sample's gradient, as in eval-mode BatchNorm.
        grad_x, grad_ws, grad_bs = ops.spatial_conv_backward(
            grad_y, x, spatial_weight, y, zeros, None, None, stride[1:], padding[1:],
            [needs[0], needs[1], spatial_bias is not None and needs[2]])
    return grad_x, grad_ws, grad_bs, grad_wt, grad_bt


def _fused_eval_backward(ctx, grad_out):
    x, ws, bs, wt, out = ctx.saved_tensors
    if out is not None:  # the final ReLU: gradient where the output is positive
        grad_out = torch.where(out > 0, grad_out, 0)
    grads = fused_eval_grads(ctx.ops, grad_out, x, ws, bs, wt, ctx.has_bt, ctx.stride, ctx.padding,
                             list(ctx.needs_input_grad[:5]))
    # needs_input_grad covers the arguments passed, which a call may end before residual.
    need = ctx.needs_input_grad
    grad_residual = grad_out if len(need) > 7 and need[7] else None
    return (*grads, None, None, grad_residual, None) + (None,) * len(ctx.ops.extra)


def register_autograd(namespace: str = "r2p1d", extra: Sequence[str] = ()) -> None:
    """Registers the autograd formulas of spatial_conv_stats, temporal_conv_bnrelu and
    fused_eval for the ops of `namespace`, whose schemas are the r2p1d ops' followed by the
    arguments named in `extra` (passed on, unchanged, to the backward ops of the namespace).
    Called once here for ``r2p1d``; the tests call it for the emulator's namespace."""

    def own(ctx, inputs):
        n = len(inputs) - len(extra)
        ctx.ops = OpSet(namespace, **dict(zip(extra, inputs[n:])))
        return inputs[:n]

    def spatial_setup(ctx, inputs, output):
        x, weight, bias, stride, padding = own(ctx, inputs)
        y, mean, _ = output
        ctx.save_for_backward(x, weight, y, mean)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None

    def temporal_setup(ctx, inputs, output):
        y, mean, scale, shift, weight, bias, stride, padding = own(ctx, inputs)
        ctx.save_for_backward(y, mean, scale, shift, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None

    def fused_eval_setup(ctx, inputs, output):
        x, ws, bs, wt, bt, stride, padding, _, relu = own(ctx, inputs)
        ctx.save_for_backward(x, ws, bs, wt, output if relu else None)
        ctx.stride, ctx.padding, ctx.has_bt = stride, padding, bt is not None

    for name, backward, setup in (("spatial_conv_stats", _spatial_backward, spatial_setup),
                                  ("temporal_conv_bnrelu", _temporal_backward, temporal_setup),
                                  ("fused_eval", _fused_eval_backward, fused_eval_setup)):
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


register_autograd()


# ---------------------------------------------------------------------------- higher order
HIGHER_ORDER_MESSAGE = (
    "r2p1d: {what} of the fused block is not supported (its kernels compute first-order "
    "gradients only); for it, use r2p1d_ext.reference.SpatioTemporalConv, which loads the "
    "same state_dict")


def _no_double_backward(ctx, *grads):
    raise RuntimeError(HIGHER_ORDER_MESSAGE.format(what="double backward (a gradient of a gradient)"))


# The backward ops are differentiable only in the sense of raising: without an autograd
# kernel, autograd would treat them as constants and return zeros for double backward.
for _name in ("r2p1d::spatial_conv_backward", "r2p1d::temporal_conv_bnrelu_backward"):
    torch.library.register_autograd(_name, _no_double_backward, setup_context=lambda ctx, inputs, output: None)
