"""Each r2p1d op on its own: float64 gradcheck, torch.library.opcheck (schema, fake kernel,
autograd registration, AOT dispatch), fake-tensor shapes, and agreement with the op's
reference in r2p1d_ext/reference.py."""
import pytest
import torch
from torch.autograd import gradcheck
from torch.library import opcheck

from r2p1d_ext import ops, reference

from conftest import DEVICES, assert_close, spatial_reference

OPS = torch.ops.r2p1d


def _spatial_args(device, dtype=torch.float64, requires_grad=False, bias=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 6, 5, generator=g, dtype=dtype)
    w = torch.randn(4, 3, 1, 3, 2, generator=g, dtype=dtype)
    b = torch.randn(4, generator=g, dtype=dtype) if bias else None
    ts = [t.to(device).requires_grad_(requires_grad) if t is not None else None for t in (x, w, b)]
    return (*ts, [2, 1], [1, 0])


def _temporal_args(device, dtype=torch.float64, requires_grad=False, bias=True, stride=2, padding=1):
    g = torch.Generator().manual_seed(1)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    y = torch.randn(2, 4, 5, 3, 2, generator=g, dtype=dtype)
    mean = torch.randn(4, generator=g, dtype=stats) * 0.3
    scale = torch.rand(4, generator=g, dtype=stats) + 0.5
    shift = torch.randn(4, generator=g, dtype=stats) * 0.3
    w = torch.randn(3, 4, 3, 1, 1, generator=g, dtype=dtype)
    b = torch.randn(3, generator=g, dtype=dtype) if bias else None
    ts = [t.to(device).requires_grad_(requires_grad) if t is not None else None
          for t in (y, mean, scale, shift, w, b)]
    return (*ts, stride, padding)


def _eval_args(device, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 7, 6, generator=g, dtype=dtype)
    ws = torch.randn(4, 3, 1, 3, 3, generator=g, dtype=dtype)
    bs = torch.randn(4, generator=g, dtype=dtype)
    wt = torch.randn(5, 4, 3, 1, 1, generator=g, dtype=dtype)
    bt = torch.randn(5, generator=g, dtype=dtype)
    return (*(t.to(device) for t in (x, ws, bs, wt, bt)), [2, 2, 1], [1, 1, 0])


# ---------------------------------------------------------------- against plain PyTorch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_spatial_conv_stats_values(device, bias):
    x, w, b, stride, padding = _spatial_args(device, bias=bias)
    got = ops.spatial_conv_stats(x, w, b, stride, padding)
    for name, a, r in zip(("y", "mean", "var"), got, reference.spatial_conv_stats(x, w, b, stride, padding)):
        assert_close(a, r, 1e-12, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (3, 2), (1, 4)])
def test_temporal_conv_bnrelu_values(device, stride, padding):
    y, mean, scale, shift, w, b, _, _ = _temporal_args(device, stride=stride, padding=padding)
    out = ops.temporal_conv_bnrelu(y, mean, scale, shift, w, b, stride, padding)
    # Padding in z space: the reference pads after the activation, as conv3d does.
    assert_close(out, reference.temporal_conv_bnrelu(y, mean, scale, shift, w, b, stride, padding), 1e-12, "out")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_eval_values(device):
    x, ws, bs, wt, bt, stride, padding = _eval_args(device)
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding)
    assert_close(out, reference.fused_eval(x, ws, bs, wt, bt, stride, padding), 1e-12, "out")


@pytest.mark.parametrize("kernel,T,t_stride", [(5, 12, 1), (5, 12, 2), (3, 60, 1)],
                         ids=["im2col", "im2col-stride2", "winograd"])
def test_fused_eval_large_sample_in_runs(kernel, T, t_stride):
    """The CPU inference op works in units of whole samples within 32 MB; a larger sample
    is split into runs of output steps, each with its temporal halo. Here one float64
    sample is 80 MB (im2col: the frame's matrix, output and z) or 35 MB (Winograd: z)."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 3, T, 96, 96, generator=g, dtype=torch.float64)
    ws, bs = torch.randn(8, 3, 1, kernel, kernel, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    wt, bt = torch.randn(5, 8, 3, 1, 1, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    stride, padding = [t_stride, 1, 1], [1, kernel // 2, kernel // 2]
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding)
    assert_close(out, reference.fused_eval(x, ws, bs, wt, bt, stride, padding), 1e-12, "out")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_update_running_stats_matches_batchnorm(device, momentum):
    """The op, its reference and nn.BatchNorm3d agree over three batches."""
    bn = torch.nn.BatchNorm3d(4, momentum=momentum).double().to(device)
    state = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    ref_state = [t.clone() for t in state]
    for step in range(3):
        y = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64, device=device) * (step + 1) + step
        bn(y)
        stats = (y.mean((0, 2, 3, 4)), y.var((0, 2, 3, 4), unbiased=False), y.numel() // 4, momentum)
        ops.update_running_stats(*state, *stats)
        reference.update_running_stats(*ref_state, *stats)
    for got in (state, ref_state):
        assert_close(got[0], bn.running_mean, 1e-12, "running_mean")
        assert_close(got[1], bn.running_var, 1e-12, "running_var")
        assert got[2].item() == bn.num_batches_tracked.item() == 3


# ---------------------------------------------------------------- gradcheck (float64)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_spatial_conv_stats_gradcheck(device, bias):
    x, w, b, stride, padding = _spatial_args(device, requires_grad=True, bias=bias)
    fn = lambda x, w, b: ops.spatial_conv_stats(x, w, b, stride, padding)
    assert gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_temporal_conv_bnrelu_gradcheck(device, stride, padding):
    args = _temporal_args(device, requires_grad=True, stride=stride, padding=padding)
    fn = lambda *t: ops.temporal_conv_bnrelu(*t, stride, padding)
    assert gradcheck(fn, args[:6], eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel,stride,padding", [(5, 1, 2), (3, 2, 1), (2, 2, 0)])
def test_spatial_general_path_matches_pytorch(kernel, stride, padding):
    """The im2col path (every spatial conv but 3x3 stride 1) works on groups of frames whose
    im2col matrix and output fit in 4 MB: 3.5 MB per float64 64x64 frame for the 5x5
    kernel, so six groups of one frame, the weight gradient summed across them; the
    3x3 and 2x2 stride-2 cases fit in one group."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 3, 64, 64, generator=g, dtype=torch.float64)
    w = torch.randn(8, 4, 1, kernel, kernel, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    st, pd = [stride, stride], [padding, padding]
    y, mean, var = ops.spatial_conv_stats(x, w, b, st, pd)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    grad_mean, grad_var = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    got = (y, mean, var, *OPS.spatial_conv_backward(grad_y, x, w, y, mean, grad_mean, grad_var, st, pd,
                                                    [True, True, True]))
    want = spatial_reference(x, w, b, st, pd, grad_y, grad_mean, grad_var)
    for name, a, r in zip(["y", "mean", "var", "grad x", "grad w", "grad b"], got, want):
        assert_close(a, r, 1e-12, name)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (1, 2)])
@pytest.mark.parametrize("shape", [(3, 6, 4, 5, 3), (1, 8, 72, 64, 64)], ids=["samples", "runs"])
def test_temporal_backward_matches_pytorch(shape, stride, padding):
    """Every gradient of the temporal op against autograd through plain PyTorch. The CPU
    kernel works in units of whole samples whose activations fit in 16 MB, or in runs of
    time steps of one larger sample: the second shape (18.9 MB per float64 sample) is split
    into runs, with taps pairing frames across the run boundary."""
    g = torch.Generator().manual_seed(7)
    M = shape[1]
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    mean, shift = torch.randn(M, generator=g, dtype=torch.float64) * 0.3, torch.randn(M, generator=g, dtype=torch.float64) * 0.3
    scale = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(5, M, 3, 1, 1, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (y, mean, scale, shift, w)]
    out = ops.temporal_conv_bnrelu(*inputs, None, stride, padding)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, grad_out)
    ref = reference.temporal_conv_bnrelu(*inputs, None, stride, padding)
    assert_close(out, ref, 1e-12, "out")
    want = torch.autograd.grad(ref, inputs, grad_out)
    for name, a, b in zip(["y", "mean", "scale", "shift", "weight"], got, want):
        assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize("device", DEVICES)
def test_block_gradcheck_through_both_ops(device):
    """The composition the module uses, BatchNorm's scale from the batch variance included."""
    x, ws, bs, stride, padding = _spatial_args(device, requires_grad=True)
    _, _, _, beta, wt, bt, _, _ = _temporal_args(device, requires_grad=True)
    gamma = torch.rand(4, dtype=torch.float64, device=device).add(0.5).requires_grad_()

    def block(x, ws, bs, gamma, beta, wt, bt):
        y, mean, var = ops.spatial_conv_stats(x, ws, bs, stride, padding)
        scale = torch.rsqrt(var + 1e-5) * gamma
        return ops.temporal_conv_bnrelu(y, mean, scale, beta, wt, bt, 1, 1)

    assert gradcheck(block, (x, ws, bs, gamma, beta, wt, bt), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- opcheck
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_spatial_conv_stats(device, requires_grad):
    opcheck(OPS.spatial_conv_stats.default, _spatial_args(device, requires_grad=requires_grad))
    opcheck(OPS.spatial_conv_stats.default, _spatial_args(device, bias=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_temporal_conv_bnrelu(device, requires_grad):
    opcheck(OPS.temporal_conv_bnrelu.default, _temporal_args(device, requires_grad=requires_grad))
    opcheck(OPS.temporal_conv_bnrelu.default, _temporal_args(device, bias=False))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_ops(device):
    x, w, b, stride, padding = _spatial_args(device)
    y, mean, var = ops.spatial_conv_stats(x, w, b, stride, padding)
    for mask in ([True, True, True], [False, True, False]):
        opcheck(OPS.spatial_conv_backward.default,
                (torch.randn_like(y), x, w, y, mean, torch.randn_like(mean), torch.randn_like(var),
                 stride, padding, mask))
    y, mean, scale, shift, wt, _, st, pt = _temporal_args(device)
    out = ops.temporal_conv_bnrelu(y, mean, scale, shift, wt, None, st, pt)
    for mask in ([True] * 6, [True, False, False, False, True, False]):
        opcheck(OPS.temporal_conv_bnrelu_backward.default,
                (torch.randn_like(out), y, mean, scale, shift, wt, st, pt, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fused_eval(device):
    opcheck(OPS.fused_eval.default, _eval_args(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_opcheck_update_running_stats(device, momentum):
    kw = dict(device=device, dtype=torch.float32)
    args = (torch.zeros(4, **kw), torch.ones(4, **kw), torch.tensor(0, device=device),
            torch.randn(4, **kw), torch.rand(4, **kw), 10, momentum)
    opcheck(OPS.update_running_stats.default, args)


# ---------------------------------------------------------------- fake tensors
def test_fake_shapes_match_real():
    from torch._subclasses.fake_tensor import FakeTensorMode
    cases = [
        (OPS.spatial_conv_stats.default, _spatial_args("cpu", torch.float32)),
        (OPS.temporal_conv_bnrelu.default, _temporal_args("cpu", torch.float32)),
        (OPS.fused_eval.default, _eval_args("cpu", torch.float32)),
    ]
    for op, args in cases:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = op(*fake_args)
        real = real if isinstance(real, tuple) else (real,)
        fake = fake if isinstance(fake, tuple) else (fake,)
        for r, f in zip(real, fake):
            assert r.shape == f.shape and r.dtype == f.dtype, op
