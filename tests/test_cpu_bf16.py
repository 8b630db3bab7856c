"""The bfloat16 path of the CPU kernels (docs/kernels.md, "bfloat16 on the CPU"): the GEMM of
each path (AVX512-BF16, AMX, the AMX code on the scalar model of the tiles) against a float64
product, each op in bfloat16 against the float64 reference of the same inputs, opcheck, and the
R2P1D_CPU_KERNELS switch. Paths this CPU lacks are skipped with the reason (conftest.py)."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

from r2p1d_ext import reference

from conftest import CPU_BF16_PATHS, assert_close, cpu_kernels

OPS = torch.ops.r2p1d
BF16_PATHS = [p for p in CPU_BF16_PATHS if p.values[0] != "float32"]
# bfloat16 has 8 significant bits (relative rounding 2^-9): an output rounded once, from an
# operand (z, y) rounded once, is within ~1e-2 of the float64 result on these sizes; the
# CUDA bfloat16 tests use the same bound (conftest.TOL).
TOL = 2e-2


def _bf16(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).bfloat16()


@pytest.mark.parametrize("path", BF16_PATHS)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 1100), n=st.integers(1, 140), trans_a=st.booleans(),
       trans_b=st.booleans(), accumulate=st.booleans(), seed=st.integers(0, 2**16))
def test_gemm_matches_float64(path, m, k, n, trans_a, trans_b, accumulate, seed):
    """Every tail (rows past the kernel's MR, columns past NR, K past a 32-step or a 512-block),
    transposed operands (the packing reads any strides) and accumulation onto C: float32
    accumulation of exact bfloat16 products, so within float32 rounding of the float64 sum."""
    gen = torch.Generator().manual_seed(seed)
    a = _bf16(k, m, gen=gen).t() if trans_a else _bf16(m, k, gen=gen)
    b = _bf16(n, k, gen=gen).t() if trans_b else _bf16(k, n, gen=gen)
    c = torch.randn(m, n, generator=gen) if accumulate else None
    with cpu_kernels(path):
        got = OPS.bf16_gemm(a, b, c)
    want = a.double() @ b.double() + (c.double() if accumulate else 0)
    scale = (a.double().abs() @ b.double().abs()).max().item() + 1
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert (got.double() - want).abs().max().item() <= 1e-5 * scale


def _spatial(gen, n=2, c=5, t=3, h=11, w=9, m=12, k=(3, 3), stride=(1, 1), padding=(1, 1)):
    x, wt = _bf16(n, c, t, h, w, gen=gen), _bf16(m, c, 1, *k, gen=gen, scale=0.3)
    return x, wt, _bf16(m, gen=gen), list(stride), list(padding)


@pytest.mark.parametrize("path", CPU_BF16_PATHS)
@pytest.mark.parametrize("geom", [dict(), dict(k=(7, 7), stride=(2, 2), padding=(3, 3), c=3),
                                  dict(k=(1, 1), padding=(0, 0), t=5), dict(m=40, c=70, h=7, w=7)],
                         ids=["3x3", "stem", "1x1", "deep"])
def test_spatial_ops(path, geom):
    """Forward (y and its batch statistics) and every gradient against float64 autograd of the
    reference on the same bfloat16 inputs."""
    gen = torch.Generator().manual_seed(0)
    x, w, b, stride, padding = _spatial(gen, **geom)
    with cpu_kernels(path):
        y, mean, var = OPS.spatial_conv_stats(x, w, b, stride, padding)
        gy, gm, gv = _bf16(*y.shape, gen=gen), torch.randn(mean.shape, generator=gen), torch.rand(var.shape, generator=gen)
        gx, gw, gb = OPS.spatial_conv_backward(gy, x, w, y, mean, gm, gv, stride, padding, [True, True, True])
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    yd, md, vd = reference.spatial_conv_stats(xd, wd, bd, stride, padding)
    assert y.dtype == torch.bfloat16 and mean.dtype == var.dtype == torch.float32
    assert_close(y, yd, TOL, "y")
    assert_close(mean, md, TOL, "mean")
    assert_close(var, vd, TOL, "var")
    # The gradient through y as stored: y rounded to bfloat16 (as the kernels' statistics see it).
    loss = (yd * gy.double()).sum() + (md * gm.double()).sum() + (vd * gv.double()).sum()
    for got, want, name in zip((gx, gw, gb), torch.autograd.grad(loss, (xd, wd, bd)), ("x", "weight", "bias")):
        assert got.dtype == torch.bfloat16
        assert_close(got, want, 5e-2 if name == "bias" else TOL, f"grad {name}")


def _temporal(gen, n=2, m=24, t=6, hw=(7, 9), o=10, kt=3):
    y = _bf16(n, m, t, *hw, gen=gen)
    mean, scale, shift = torch.randn(m, generator=gen) * 0.2, torch.rand(m, generator=gen) + 0.5, torch.randn(m, generator=gen) * 0.2
    return y, mean, scale, shift, _bf16(o, m, kt, 1, 1, gen=gen, scale=0.3), _bf16(o, gen=gen)


@pytest.mark.parametrize("path", CPU_BF16_PATHS)
@pytest.mark.parametrize("stride,padding,kt", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (1, 2, 3)])
def test_temporal_ops(path, stride, padding, kt):
    """Forward and every gradient; z enters the GEMM rounded to bfloat16 (as eager's
    BatchNorm+ReLU output does), its gradient stays float32."""
    gen = torch.Generator().manual_seed(1)
    y, mean, scale, shift, w, b = _temporal(gen, kt=kt)
    with cpu_kernels(path):
        out = OPS.temporal_conv_bnrelu(y, mean, scale, shift, w, b, stride, padding)
        go = _bf16(*out.shape, gen=gen)
        grads = OPS.temporal_conv_bnrelu_backward(go, y, mean, scale, shift, w, stride, padding, [True] * 6)
    inputs = [t.double().requires_grad_() for t in (y, mean, scale, shift, w, b)]
    want = reference.temporal_conv_bnrelu(*inputs, stride, padding)
    assert out.dtype == torch.bfloat16
    assert_close(out, want, TOL, "out")
    names = ("y", "mean", "scale", "shift", "weight", "bias")
    for got, ref, name in zip(grads, torch.autograd.grad((want * go.double()).sum(), inputs), names):
        assert got.dtype == (torch.bfloat16 if name in ("y", "weight", "bias") else torch.float32), name
        assert_close(got, ref, TOL, f"grad {name}")


def _eval(gen, n=2, c=5, m=12, o=7, t=5, h=9, k=3, stride=(1, 1, 1), padding=(1, 1, 1), kt=3):
    x = _bf16(n, c, t, h, h, gen=gen)
    ws, bs = _bf16(m, c, 1, k, k, gen=gen, scale=0.3), _bf16(m, gen=gen)
    wt, bt = _bf16(o, m, kt, 1, 1, gen=gen, scale=0.3), _bf16(o, gen=gen)
    to = (t + 2 * padding[0] - kt) // stride[0] + 1
    ho = (h + 2 * padding[1] - k) // stride[1] + 1
    return x, ws, bs, wt, bt, list(stride), list(padding), _bf16(n, o, to, ho, ho, gen=gen)


@pytest.mark.parametrize("path", CPU_BF16_PATHS)
@pytest.mark.parametrize("kw", [dict(), dict(kt=1, padding=(1, 1, 1)), dict(stride=(2, 2, 2), h=14, t=6),
                                dict(h=56, t=3, n=1, c=3, k=7, stride=(1, 2, 2), padding=(1, 3, 3)),
                                dict(h=7, t=1, n=1, c=256, m=24),
                                dict(n=1, c=8, m=64, o=8, t=20, h=112)],
                         ids=["plain", "padding-only-steps", "strided", "stem", "one-7x7-frame", "runs"])
@pytest.mark.parametrize("relu,with_residual", [(True, True), (False, False)])
def test_fused_eval(path, kw, relu, with_residual):
    """The inference fusion with its residual and ReLU epilogue; the "runs" shape is larger
    than a unit's z budget, so it is computed in runs of output steps."""
    if path == "emulated-amx" and kw.get("h", 9) > 56:
        pytest.skip("the scalar model of the tiles is too slow for this size; the other shapes run its code")
    gen = torch.Generator().manual_seed(2)
    x, ws, bs, wt, bt, stride, padding, res = _eval(gen, **kw)
    res = res if with_residual else None
    with cpu_kernels(path):
        out = OPS.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu)
    d = lambda t: t.double() if t is not None else None  # noqa: E731
    want = reference.fused_eval(*(d(t) for t in (x, ws, bs, wt, bt)), stride, padding, d(res), relu)
    assert out.dtype == torch.bfloat16
    assert_close(out, want, TOL, "out")


def test_opcheck_in_bfloat16():
    """Schema, fake kernels and autograd registration hold for bfloat16 tensors on this CPU's
    own path."""
    gen = torch.Generator().manual_seed(3)
    x, w, b, stride, padding = _spatial(gen)
    opcheck(OPS.spatial_conv_stats.default, (x.requires_grad_(), w.requires_grad_(), b, stride, padding))
    y, mean, scale, shift, wt, bt = _temporal(gen)
    opcheck(OPS.temporal_conv_bnrelu.default, (y.requires_grad_(), mean, scale, shift, wt.requires_grad_(), bt, 1, 1))
    xe, ws, bs, wte, bte, se, pe, res = _eval(gen)
    opcheck(OPS.fused_eval.default, (xe, ws, bs, wte, bte, se, pe, res, True))


def test_the_switch_names_what_it_expects():
    x, w, b, stride, padding = _spatial(torch.Generator().manual_seed(4))
    with cpu_kernels("avx-9000"), pytest.raises(ValueError, match="expected R2P1D_CPU_KERNELS to be auto, amx"):
        OPS.spatial_conv_stats(x, w, b, stride, padding)
    with cpu_kernels("auto"):
        best = OPS.cpu_bf16_path()
    assert best in ("amx", "avx512-bf16", "float32")
    for forced in ("amx", "avx512-bf16"):
        if best == forced or best == "amx":
            continue
        with cpu_kernels(forced), pytest.raises(RuntimeError, match="this CPU"):
            OPS.spatial_conv_stats(x, w, b, stride, padding)
    for name in ("float32", "emulated-amx"):
        with cpu_kernels(name):
            assert OPS.cpu_bf16_path() == name
    assert os.environ.get("R2P1D_CPU_KERNELS") != "avx-9000"
