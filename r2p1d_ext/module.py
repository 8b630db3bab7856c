"""SpatioTemporalConv: the fused (2+1)D block as a drop-in replacement for nn.Conv3d."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from . import folding, ops, reference, sync_bn
from ._args import block_config, output_size


def _check_conv3d_only_options(dilation, groups, padding_mode) -> None:
    """nn.Conv3d's keyword arguments that the (2+1)D block supports only at their defaults."""
    if dilation not in (1, (1, 1, 1), [1, 1, 1]):
        raise ValueError(f"SpatioTemporalConv: expected dilation=1 (the block has no dilated kernels), got {dilation!r}")
    if groups != 1:
        raise ValueError(f"SpatioTemporalConv: expected groups=1 (the block has no grouped convolutions), got {groups!r}")
    if padding_mode != "zeros":
        raise ValueError(f"SpatioTemporalConv: expected padding_mode='zeros' (the only padding the kernels do), "
                         f"got {padding_mode!r}")


def _memory_format(x: Tensor) -> torch.memory_format:
    """The input's memory format, which the output takes (the ops' own layout is device-wide:
    NCDHW on the CPU, channels_last_3d on CUDA; see ops.py)."""
    return (torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
            and not x.is_contiguous() else torch.contiguous_format)


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None


def cpu_precision_notice(dtype: Optional[torch.dtype]) -> Optional[str]:
    """The one-line notice that `dtype` runs slowly in the CPU kernels (None where it does
    not: float32, float64, no autocast, and bfloat16 on a CPU with a bfloat16 path).

    bfloat16 takes the CPU's own bfloat16 units where it has them (AMX or AVX512-BF16,
    chosen at run time, R2P1D_CPU_KERNELS to force one: docs/kernels.md). Without them, and
    always for float16, the CPU kernels convert to float32, run their float32 kernels and
    round the results: slower than float32 itself (README, "Precision on the CPU"). The
    trainer prints the notice at the start of a run; the module warns with it at its first
    such call in a process."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = str(dtype).replace("torch.", "")
    if dtype == torch.bfloat16:
        path = torch.ops.r2p1d.cpu_bf16_path()
        if path != "float32":
            return None
        why = ("R2P1D_CPU_KERNELS=float32" if os.environ.get("R2P1D_CPU_KERNELS") == "float32"
               else "this CPU has no AMX or AVX512-BF16 unit")
    else:
        why = "r2p1d_ext's CPU kernels have no float16 path"
    return (f"{name} on the CPU: {why}, so the CPU kernels compute {name} in float32 with conversions, "
            "slower than float32 itself; use float32 on the CPU (README: Precision on the CPU)")


_cpu_notice_given = False


def _warn_cpu_precision_once(dtype: torch.dtype) -> None:
    global _cpu_notice_given
    notice = cpu_precision_notice(dtype)
    if notice:
        _cpu_notice_given = True
        # The caller of the module: past forward, nn.Module's _call_impl and __call__.
        warnings.warn(notice, UserWarning, stacklevel=5)


def _refuse_forward_ad(*tensors: Optional[Tensor]) -> None:
    """Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) has no formula in the
    r2p1d ops: say so rather than let a tangent silently come out as zero."""
    if any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError(ops.HIGHER_ORDER_MESSAGE.format(
            what="forward-mode AD (torch.func.jvp, torch.autograd.forward_ad)"))


class SpatioTemporalConv(nn.Module):
    r"""R(2+1)D convolution: spatial conv (1,kh,kw) -> BatchNorm3d -> ReLU -> temporal conv
    (kt,1,1), computed by the fused r2p1d kernels.

    A drop-in for ``nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding)``:
    the same output shape, int or (t, h, w) sizes, padding ``'same'``/``'valid'``,
    batched (N, C, T, H, W) or unbatched (C, T, H, W) input, contiguous or
    ``torch.channels_last_3d`` in and the same format out, ``torch.autocast``.

    ``mid_channels`` defaults to the paper's parameter-matching count
    ``floor(kt*kh*kw*C_in*C_out / (kh*kw*C_in + kt*C_out))``.

    Parameters and buffers (``spatial_conv.weight/bias``, ``bn.*``, ``temporal_conv.weight/bias``)
    are held by an ``nn.Conv3d``, an ``nn.BatchNorm3d`` and an ``nn.Conv3d`` child, with the
    names of the unfused block (:class:`r2p1d_ext.reference.SpatioTemporalConv`), so
    state_dicts load both ways; the children only hold them, forward never calls them.

    Training: the spatial kernel also produces the BatchNorm batch statistics, the temporal
    kernel applies BatchNorm+ReLU while loading, and only x and the spatial output are saved
    for backward. Evaluation (running statistics): BatchNorm is folded into the spatial
    weights and one fused op computes the block, with or without autograd. Gradients are
    first order: double backward and forward-mode AD raise a RuntimeError (the pure-PyTorch
    ``r2p1d_ext.reference.SpatioTemporalConv`` loads the same state_dict and does both).

    On CUDA, bfloat16/float16 (and float32 as TF32, where ``torch.backends.cudnn.allow_tf32``)
    run on tensor-core kernels that work in channels_last_3d; a contiguous input costs a
    layout conversion at each end, so keep video activations channels_last_3d on the GPU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, mid_channels: Optional[int] = None, *, dilation=1, groups: int = 1,
                 padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        _check_conv3d_only_options(dilation, groups, padding_mode)
        kernel, stride, padding, mid = block_config(in_channels, out_channels, kernel_size,
                                                    stride, padding, mid_channels)
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel_size, self.stride, self.padding = kernel, stride, padding
        factory = {"device": device, "dtype": dtype}  # as nn.Conv3d's (meta device included)
        self.spatial_conv = nn.Conv3d(in_channels, mid, (1, kernel[1], kernel[2]),
                                      stride=(1, stride[1], stride[2]),
                                      padding=(0, padding[1], padding[2]), bias=bias, **factory)
        self.bn = nn.BatchNorm3d(mid, **factory)
        self.temporal_conv = nn.Conv3d(mid, out_channels, (kernel[0], 1, 1),
                                       stride=(stride[0], 1, 1), padding=(padding[0], 0, 0),
                                       bias=bias, **factory)

    def __prepare_scriptable__(self):
        raise RuntimeError(f"{type(self).__name__} cannot be compiled by torch.jit.script (its ops are custom "
                           "operators with Python autograd formulas); use torch.jit.trace, torch.compile or "
                           "torch.export, or script a model built from r2p1d_ext.reference.SpatioTemporalConv")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, mid_channels={self.mid_channels}")

    # -------------------------------------------------------------------- checks
    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__}: expected a 5-D (N, C, T, H, W) or 4-D "
                             f"(C, T, H, W) input, got {x.dim()}-D with shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input with {self.in_channels} "
                             f"channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        for dim, size, k, p in zip("THW", x.shape[2:], self.kernel_size, self.padding):
            if size + 2 * p < k:
                raise ValueError(f"{type(self).__name__}: input size {dim}={size} (padded "
                                 f"{size + 2 * p}) is smaller than the kernel size {k}")
        if 0 in x.shape[1:]:
            raise ValueError(f"{type(self).__name__}: expected non-empty channel, time and space "
                             f"dimensions, got input of shape {tuple(x.shape)}")
        weight = self.spatial_conv.weight
        if x.device != weight.device:
            raise ValueError(f"{type(self).__name__}: expected input on {weight.device} (the "
                             f"module's device), got {x.device}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"{type(self).__name__}: expected input of dtype {weight.dtype} "
                             f"(the module's parameters), got {x.dtype}")

    def _check_unbatched(self, x: Tensor) -> None:
        """A 4-D input is read as one unbatched (C, T, H, W) clip: say so when its channels
        do not match (a (N, T, H, W) batch or a clip without its channel dimension)."""
        if x.shape[0] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: a 4-D input is read as one unbatched (C, T, H, W) clip, "
                             f"expected C={self.in_channels}, got shape {tuple(x.shape)}; pass a batch as "
                             f"(N, {self.in_channels}, T, H, W)")

    # -------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 4
        if unbatched:
            self._check_unbatched(x)
            x = x.unsqueeze(0)
        self._check_input(x)
        if x.device.type == "cpu" and not _cpu_notice_given and not torch.compiler.is_compiling():
            _warn_cpu_precision_once(_autocast_dtype(x) or x.dtype)
        fmt = _memory_format(x)
        if x.shape[0] > 0 and self.folds_batchnorm() and not torch.onnx.is_in_onnx_export():
            # Running statistics: BatchNorm folds into the spatial weights and one op computes
            # the block, with or without autograd (its backward is fused_eval's own, ops.py).
            out = self._inference(x, None, None, False)
        else:
            ws, bs = self.spatial_conv.weight, self.spatial_conv.bias
            wt, bt = self.temporal_conv.weight, self.temporal_conv.bias
            dt = _autocast_dtype(x)
            if dt is not None:
                # As nn.Conv3d under autocast: convolutions run in the autocast dtype; the
                # BatchNorm statistics and affine map stay float32.
                x, ws, wt = x.to(dt), ws.to(dt), wt.to(dt)
                bs = bs.to(dt) if bs is not None else None
                bt = bt.to(dt) if bt is not None else None
            if x.shape[0] == 0:
                out = self._empty_batch(x, ws, bs, wt, bt, group=sync_bn.process_group(self.bn))
            else:
                out = self._block(x, ws, bs, wt, bt)
        out = out.contiguous(memory_format=fmt)
        return out.squeeze(0) if unbatched else out

    # -------------------------------------------------------------------- inference
    def folds_batchnorm(self) -> bool:
        """Whether the block runs as one inference op: eval with running statistics."""
        return not self.training and self.bn.running_mean is not None

    def train(self, mode: bool = True):
        if mode:  # the folded inference weights are a copy of the parameters: free them
            folding.clear_caches(self)
        return super().train(mode)

    def fused_inference(self, x: Tensor, post: Optional[nn.Module] = None,
                        residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
        """``relu(post(self(x)) + residual)`` in eval as one ``fused_eval`` op, for a 5-D
        batch: ``post`` a BatchNorm3d with running statistics (folded into the temporal
        conv), ``residual`` a tensor of the output's shape. Networks call it through
        :func:`r2p1d_ext.conv_bn.conv_bn`, which checks that it applies."""
        self._check_input(x)
        return self._inference(x, post, residual, relu).contiguous(memory_format=_memory_format(x))

    def _inference(self, x: Tensor, post: Optional[nn.Module], residual: Optional[Tensor],
                   relu: bool) -> Tensor:
        bn = self.bn
        if not torch.compiler.is_compiling():
            _refuse_forward_ad(x, residual, self.spatial_conv.weight, self.spatial_conv.bias,
                               self.temporal_conv.weight, self.temporal_conv.bias, bn.weight, bn.bias,
                               *([post.weight, post.bias] if post is not None else []))
        dt = _autocast_dtype(x)
        ws, bs, wt, bt = self._inference_weights(post, dt)
        if dt is not None:
            x = x.to(dt)
            residual = residual.to(dt) if residual is not None else None
        return ops.fused_eval(x, ws, bs, wt, bt, list(self.stride), list(self.padding), residual, relu)

    def _inference_weights(self, post: Optional[nn.Module], dt: Optional[torch.dtype]):
        """The weights fused_eval takes: BatchNorm folded into the spatial conv, ``post``
        (if any) into the temporal conv, cast to the autocast dtype ``dt`` (if any); cached
        while the parameters and statistics are unchanged (r2p1d_ext/folding.py). On the
        CPU the temporal weight is laid out (O, kt, M) in memory, the order the kernel's
        GEMM reads (no copy per call)."""
        bn = self.bn
        ws, bs = self.spatial_conv.weight, self.spatial_conv.bias
        wt, bt = self.temporal_conv.weight, self.temporal_conv.bias
        sources = [ws, bs, wt, bt, *folding.bn_sources(bn), *folding.bn_sources(post)]
        # id() of None is not traceable by every torch.compile (2.11's dynamo refuses it)
        extra = (bn.eps, None if post is None else (id(post), post.eps), dt)

        def compute():
            scale, shift = self._affine(bn.running_var)
            ws_f, bs_f = self._fold(ws, bs, bn.running_mean, scale, shift)
            wt_f, bt_f = (wt, bt) if post is None else folding.fold_after(wt, bt, post)
            if dt is not None:
                ws_f, bs_f, wt_f = ws_f.to(dt), bs_f.to(dt), wt_f.to(dt)
                bt_f = bt_f.to(dt) if bt_f is not None else None
            if wt_f.device.type == "cpu":  # memory (O, kt, M): the CPU kernel's GEMM operand
                wt_f = wt_f.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
            return ws_f, bs_f, wt_f, bt_f

        return folding.cache_of(self).get(sources, extra, compute)

    def _empty_batch(self, x: Tensor, *weights: Optional[Tensor], group=None) -> Tensor:
        """A batch of 0 clips, as nn.Conv3d takes it: an empty output of the right shape, still
        part of the autograd graph (zero gradients), and no running-statistics update (there
        are no values). Synchronized (``group``), the process still takes part in the
        statistics' merge, forward and backward, and updates its running statistics with
        the other processes' values, as they do."""
        shape = [0, self.out_channels] + [output_size(n, k, s, p) for n, k, s, p in
                                          zip(x.shape[2:], self.kernel_size, self.stride, self.padding)]
        anchor = sum(t.sum() * 0 for t in (x, *weights, self.bn.weight, self.bn.bias) if t is not None)
        if group is not None:
            bn = self.bn
            stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            zeros = anchor.to(stats_dtype).expand(self.mid_channels)
            mean, var, count = sync_bn.merge_batch_stats(zeros, zeros, 0, group)
            if bn.track_running_stats and count > 1:
                ops.update_running_stats(bn.running_mean, bn.running_var, bn.num_batches_tracked,
                                         mean.detach(), var.detach(), count, bn.momentum)
            anchor = anchor + (mean.sum() + var.sum()) * 0
        return anchor.to(x.dtype).expand(shape)

    def _block(self, x: Tensor, ws: Tensor, bs: Optional[Tensor], wt: Tensor,
               bt: Optional[Tensor]) -> Tensor:
        bn = self.bn
        if torch.onnx.is_in_onnx_export():
            return self._standard_ops(x, ws, bs, wt, bt)
        if not torch.compiler.is_compiling():
            _refuse_forward_ad(x, ws, bs, wt, bt, bn.weight, bn.bias)
        stride_hw, pad_hw = list(self.stride[1:]), list(self.padding[1:])
        y, mean, var = ops.spatial_conv_stats(x, ws, bs, stride_hw, pad_hw)
        count = y.numel() // y.shape[1]
        group = sync_bn.process_group(bn)
        if group is not None:  # nn.SyncBatchNorm: the statistics of every process's batch
            mean, var, count = sync_bn.merge_batch_stats(mean, var, count, group)
        if self.training and count <= 1:
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per "
                             f"channel when training, got input of shape {tuple(x.shape)}")
        if self.training and bn.track_running_stats:
            ops.update_running_stats(bn.running_mean, bn.running_var, bn.num_batches_tracked,
                                     mean.detach(), var.detach(), count, bn.momentum)
        scale, shift = self._affine(var)
        return ops.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, self.stride[0],
                                        self.padding[0])

    def _standard_ops(self, x: Tensor, ws: Tensor, bs: Optional[Tensor], wt: Tensor,
                      bt: Optional[Tensor]) -> Tensor:
        """The block in standard operators, for torch.onnx.export (both exporters): ONNX
        runtimes know Conv and Relu, not our ops. With running statistics it is the
        computation of the inference op (BatchNorm folded into the spatial conv, as
        fused_eval gets it), so an exported model is Conv -> Relu -> Conv per block;
        otherwise the unfused block with batch statistics (reference.spatio_temporal_conv;
        the graph normalises with them and updates no running statistics)."""
        bn = self.bn
        if self.training or bn.running_mean is None:
            return reference.spatio_temporal_conv(x, ws, bs, bn.weight, bn.bias, None, None, wt, bt,
                                                  self.stride, self.padding, True, 0.1, bn.eps)
        scale, shift = self._affine(bn.running_var)
        ws_f, bs_f = self._fold(ws, bs, bn.running_mean, scale, shift)
        z = F.relu(F.conv3d(x, ws_f, bs_f, (1, *self.stride[1:]), (0, *self.padding[1:])))
        return F.conv3d(z, wt, bt, (self.stride[0], 1, 1), (self.padding[0], 0, 0))

    def _affine(self, var: Tensor):
        """The block's BatchNorm as (scale, shift) for variance ``var`` (folding.bn_scale_shift)."""
        return folding.bn_scale_shift(self.bn, var)

    @staticmethod
    def _fold(ws: Tensor, bs: Optional[Tensor], mean: Tensor, scale: Tensor, shift: Tensor):
        """Spatial weight and bias with BatchNorm folded in: relu((conv(x)+b-mean)*scale+shift)
        = relu(conv(x; w*scale) + (b-mean)*scale + shift)."""
        return folding.fold_into(ws, bs, mean, scale, shift)
