"""Winograd F(4, 3) along time in the CPU inference op (csrc/cpu/winograd/temporal.h):
fused_eval's temporal conv (3 taps, stride 1, at least 8 output steps) computed by whole
tiles of 4 output steps, the remaining steps directly. Checked against plain PyTorch in
float64 (exact up to rounding) and float32, with the residual and the ReLU, on every
padding and remainder, in the kernel's runs of a large sample, and against the direct path
(R2P1D_TEMPORAL_WINOGRAD=off)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import r2p1d_ext  # noqa: F401  (registers the ops)
from r2p1d_ext import ops, reference

from conftest import assert_close, env_setting


def temporal_winograd(setting):
    """Runs with R2P1D_TEMPORAL_WINOGRAD set to `setting` (auto or off)."""
    return env_setting("R2P1D_TEMPORAL_WINOGRAD", setting)


def _case(n, c, m, o, t, h, pt, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    x, ws, bs, wt, bt = r(n, c, t, h, h), r(m, c, 1, 3, 3), r(m), r(o, m, 3, 1, 1), r(o)
    to = t + 2 * pt - 2
    return x, ws, bs, wt, bt, [1, 1, 1], [pt, 1, 1], r(n, o, to, h, h)


def _reference(x, ws, bs, wt, bt, stride, padding, residual=None, relu=False):
    """reference.fused_eval in float64."""
    return reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), stride, padding,
                                residual.double() if residual is not None else None, relu)


# Output steps: 8 (two tiles), 9 (a remainder step), 10 and 11 (remainders), 16 (four
# tiles); padding 0-2 (tiles whose first or last input frames are padding, or none).
@pytest.mark.parametrize("t,pt", [(8, 1), (9, 1), (12, 0), (11, 2), (16, 1), (13, 0)])
@pytest.mark.parametrize("n", [1, 3])
def test_matches_pytorch_in_float64(t, pt, n):
    x, ws, bs, wt, bt, stride, padding, res = _case(n, 5, 64, 7, t, 6, pt)
    for residual, relu in [(None, False), (res, True)]:
        out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, residual, relu)
        assert_close(out, _reference(x, ws, bs, wt, bt, stride, padding, residual, relu), 1e-12, "out")


def test_float32_error_is_that_of_the_direct_path():
    """R(2+1)D-18's conv2_x at 8 frames: F(4, 3)'s transforms multiply by up to 8 and by 1/24,
    so float32 loses a little more than the direct conv, well within 1e-5."""
    x, ws, bs, wt, bt, stride, padding, res = _case(1, 64, 144, 64, 8, 14, 1, torch.float32)
    ws, wt = ws * 0.1, wt * 0.1
    want = _reference(x, ws, bs, wt, bt, stride, padding, res, True)
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    with temporal_winograd("off"):
        direct = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    err = float((out.double() - want).norm() / want.norm())
    err_direct = float((direct.double() - want).norm() / want.norm())
    assert err < 1e-5, err
    assert err < 10 * err_direct + 1e-7, (err, err_direct)


def test_taken_only_where_it_pays():
    """The float32 results of the two paths differ in their last bits where F(4, 3) runs (8
    and more output steps, 64 and more input channels) and are identical where it does not
    (fewer steps or channels, a stride, other kernel sizes): the kernel's choice, seen from
    outside."""
    def both(t, kt=3, st=1, m=64):
        x, ws, bs, wt, bt, stride, padding, _ = _case(2, 8, m, 8, t, 8, 1, torch.float32)
        wt = torch.randn(8, m, kt, 1, 1)
        args = (x, ws, bs, wt, bt, [st, 1, 1], [kt // 2, 1, 1])
        with temporal_winograd("off"):
            direct = ops.fused_eval(*args)
        with temporal_winograd("auto"):
            return ops.fused_eval(*args), direct

    assert not torch.equal(*both(8))
    assert not torch.equal(*both(17))
    for kw in [dict(t=7), dict(t=4), dict(t=12, st=2), dict(t=12, kt=5), dict(t=12, kt=1), dict(t=12, m=63)]:
        assert torch.equal(*both(**kw)), kw


def test_in_runs_of_a_large_sample():
    """A sample whose intermediate exceeds the kernel's 32 MB unit is computed in runs of
    output steps (10 here: two tiles and two direct steps per run)."""
    x, ws, bs, wt, bt, stride, padding, res = _case(1, 4, 64, 8, 20, 112, 1, torch.float32)
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    assert_close(out, _reference(x, ws, bs, wt, bt, stride, padding, res, True), 1e-5, "out")


@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 3), c=st.integers(1, 5), m=st.integers(60, 70), o=st.integers(1, 6),
       t=st.integers(6, 14), h=st.integers(1, 7), pt=st.integers(0, 2), relu=st.booleans())
def test_random_shapes(n, c, m, o, t, h, pt, relu):
    x, ws, bs, wt, bt, stride, padding, res = _case(n, c, m, o, t, h + 2, pt)
    res = res if relu else None
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu)
    assert_close(out, _reference(x, ws, bs, wt, bt, stride, padding, res, relu), 1e-12, "out")


def test_opcheck():
    opcheck(torch.ops.r2p1d.fused_eval.default, _case(2, 3, 64, 5, 9, 5, 1)[:7])


def test_bad_setting_is_named():
    x, ws, bs, wt, bt, stride, padding, _ = _case(1, 2, 64, 2, 8, 4, 1)
    with temporal_winograd("4"), pytest.raises(ValueError, match="R2P1D_TEMPORAL_WINOGRAD to be auto or off"):
        ops.fused_eval(x, ws, bs, wt, bt, stride, padding)
