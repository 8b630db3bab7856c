"""The tensor-core code path on the CPU: the r2p1d_tc_emulate ops (csrc/emulate/) wrapped
with autograd, as a drop-in for `r2p1d_ext.ops` in the module (tests monkeypatch
`r2p1d_ext.module.ops` with `EmulatedOps`). They run the GPU kernels' loaders, fragment
loads, epilogues and K splits on the host, so a module test through them checks, without
a GPU, what the CUDA tensor-core path computes (bf16, fp16, and fp32 as TF32)."""
import torch

from r2p1d_ext import ops

EMU = torch.ops.r2p1d_tc_emulate


class EmulatedOps:
    """The subset of r2p1d_ext.ops the module calls, on the emulated tensor-core kernels,
    planned for a GPU of `sm_count` SMs with the `tile` shape (-1: as chosen)."""

    def __init__(self, sm_count: int = 132, tile: int = -1):
        self.plan = (sm_count, tile)
        self.update_running_stats = ops.update_running_stats
        outer = self

        class Spatial(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, w, b, stride, padding):
                y, mean, var = EMU.spatial_conv_stats(x, w, b, stride, padding, *outer.plan)
                ctx.save_for_backward(x, w, y, mean)
                ctx.args, ctx.has_bias = (stride, padding), b is not None
                return y, mean, var

            @staticmethod
            def backward(ctx, gy, gmean, gvar):
                x, w, y, mean = ctx.saved_tensors
                gy = torch.zeros_like(y) if gy is None else gy
                mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
                gx, gw, gb = EMU.spatial_conv_backward(gy, x, w, y, mean, gmean, gvar, *ctx.args, mask, *outer.plan)
                return gx, gw, gb, None, None

        class Temporal(torch.autograd.Function):
            @staticmethod
            def forward(ctx, y, mean, scale, shift, w, b, stride, padding):
                ctx.save_for_backward(y, mean, scale, shift, w)
                ctx.args, ctx.has_bias = (stride, padding), b is not None
                return EMU.temporal_conv_bnrelu(y, mean, scale, shift, w, b, stride, padding, *outer.plan)

            @staticmethod
            def backward(ctx, go):
                y, mean, scale, shift, w = ctx.saved_tensors
                need = ctx.needs_input_grad
                mask = [need[0], need[1], need[2], need[3], need[4], ctx.has_bias and need[5]]
                grads = EMU.temporal_conv_bnrelu_backward(go, y, mean, scale, shift, w, *ctx.args,
                                                          mask, *outer.plan)
                return (*grads, None, None)

        planned = _Planned(self.plan)

        class FusedEval(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, ws, bs, wt, bt, stride, padding):
                ctx.save_for_backward(x, ws, bs, wt)
                ctx.args, ctx.has_bt = (stride, padding), bt is not None
                return EMU.fused_eval(x, ws, bs, wt, bt, stride, padding, *outer.plan)

            @staticmethod
            def backward(ctx, go):
                x, ws, bs, wt = ctx.saved_tensors
                grads = ops.fused_eval_grads(planned, go, x, ws, bs, wt, ctx.has_bt, *ctx.args,
                                             list(ctx.needs_input_grad[:5]))
                return (*grads, None, None)

        self._spatial, self._temporal, self._fused_eval = Spatial, Temporal, FusedEval

    def spatial_conv_stats(self, x, w, b, stride, padding):
        return self._spatial.apply(x, w, b, stride, padding)

    def temporal_conv_bnrelu(self, y, mean, scale, shift, w, b, stride, padding):
        return self._temporal.apply(y, mean, scale, shift, w, b, stride, padding)

    def fused_eval(self, x, ws, bs, wt, bt, stride, padding, residual=None, relu=False):
        # The residual add and ReLU follow the tensor-core kernels as separate passes, as in
        # csrc/cuda/fused_eval_cuda.cu.
        out = self._fused_eval.apply(x, ws, bs, wt, bt, stride, padding)
        out = out + residual if residual is not None else out
        return torch.relu(out) if relu else out


class _Planned:
    """The emulator's ops with the plan arguments appended: the op namespace that
    ops.fused_eval_grads calls."""

    def __init__(self, plan):
        self.plan = plan

    def __getattr__(self, name):
        op = getattr(EMU, name)
        return lambda *args: op(*args, *self.plan)
