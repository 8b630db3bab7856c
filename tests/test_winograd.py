"""The CPU Winograd path (csrc/cpu/winograd/), F(2x2, 3x3) and F(4x4, 3x3), taken by every
spatial (1,3,3) stride-1 convolution with padding <= 2: the module on random shapes of that
family, each op against float64 PyTorch (paddings 0-2, odd sizes, batches spanning several
tile batches), float64 gradcheck, statistics with |mean| >> std, concurrent calls sharing
the scratch pool, and which tile size the automatic choice takes. Each runs with both tile
sizes forced through R2P1D_WINOGRAD (read by the kernels at every call). The general
random-shape tests (test_module.py) reach this path only rarely."""
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from r2p1d_ext import ops, reference
from r2p1d_ext._args import default_mid_channels

from conftest import assert_close, env_setting, spatial_reference
from test_module import _run

OPS = torch.ops.r2p1d
TILES = ["2", "4"]


def winograd(setting):
    """Runs the block with R2P1D_WINOGRAD set to `setting` (2, 4, off or auto)."""
    return env_setting("R2P1D_WINOGRAD", setting)


@st.composite
def winograd_cases(draw):
    """Blocks whose spatial conv is 3x3, stride 1, padding 0-2 (the temporal part varies)."""
    cin, cout = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    kt = draw(st.sampled_from([1, 3]))
    pt, ph, pw = draw(st.integers(0, kt // 2 + 1)), draw(st.integers(0, 2)), draw(st.integers(0, 2))
    T = draw(st.integers(max(1, kt - 2 * pt), 5))
    H, W = (draw(st.integers(max(1, 3 - 2 * p), 13)) for p in (ph, pw))
    per_sample = T * (H + 2 * ph - 2) * (W + 2 * pw - 2)
    batch = max(draw(st.integers(1, 3)), -(-4 // per_sample))  # >= 4 values per BN channel
    kernel = (kt, 3, 3)
    mid = None if default_mid_channels(cin, cout, kernel) > 0 else draw(st.integers(1, 4))
    return dict(seed=draw(st.integers(0, 2**31 - 1)), cin=cin, cout=cout, kernel=kernel,
                stride=(draw(st.integers(1, 2)), 1, 1), padding=(pt, ph, pw),
                shape=(batch, cin, T, H, W), bias=draw(st.booleans()), mid=mid,
                channels_last=draw(st.booleans()))


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(case=winograd_cases())
def test_module_matches_reference(case, dtype, train, tile):
    with winograd(tile):
        _run(case, dtype, "cpu", train)


@pytest.mark.parametrize("tile", TILES + ["off"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,mid,padding", [
    ((2, 3, 3, 5, 7), 4, (1, 1)),
    ((1, 2, 2, 6, 6), 5, (0, 0)),
    ((2, 3, 2, 4, 5), 3, (2, 1)),
    ((2, 3, 2, 7, 3), 2, (2, 2)),
    ((1, 4, 1, 1, 1), 3, (1, 1)),     # one pixel: every tap but the centre in the padding
    ((1, 16, 2, 112, 112), 160, (1, 1)),  # several tile batches per call
    # conv5_x-like: the filters (16-36 x 1152 x 256) far outweigh the activations, so
    # they are taken in 3-11 chunks of the weight rows (winograd/plan.h, chunk_rows); "batches"
    # takes 2 chunks with several tile batches
    ((2, 256, 2, 7, 7), 1152, (1, 1)),
], ids=["p1", "p0", "p21", "p2", "pixel", "batches", "chunks"])
def test_spatial_ops_match_pytorch(shape, mid, padding, dtype, tile):
    """F(4x4)'s float32 error is ~3e-6 of the norm on R(2+1)D-18 shapes, F(2x2)'s ~5e-7."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    w = torch.randn(mid, shape[1], 1, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(mid, generator=g, dtype=dtype)
    with winograd(tile):
        y, mean, var = ops.spatial_conv_stats(x, w, b, [1, 1], list(padding))
        grad_y = torch.randn(y.shape, generator=g, dtype=dtype)
        grad_mean, grad_var = torch.randn(mid, generator=g), torch.randn(mid, generator=g)
        grad_mean, grad_var = grad_mean.to(mean.dtype), grad_var.to(mean.dtype)
        gx, gw, gb = OPS.spatial_conv_backward(grad_y, x, w, y, mean, grad_mean, grad_var,
                                               [1, 1], list(padding), [True, True, True])
    want = spatial_reference(x, w, b, (1, 1), padding, grad_y, grad_mean, grad_var)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, got, ref in zip(["y", "mean", "var", "grad x", "grad w", "grad b"],
                              [y, mean, var, gx, gw, gb], want):
        assert_close(got, ref, tol, name)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape,mid,padding", [
    ((3, 5, 4, 9, 8), 7, [1, 1, 1]),
    ((3, 5, 4, 9, 8), 7, [0, 2, 0]),
    ((2, 256, 2, 7, 7), 1152, [1, 1, 1]),  # the filters in 6-11 chunks (conv5_x-like)
], ids=["p1", "p020", "chunks"])
def test_fused_eval_matches_pytorch(shape, mid, padding, tile):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    ws, bs = torch.randn(mid, shape[1], 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(mid, generator=g, dtype=torch.float64)
    wt, bt = torch.randn(6, mid, 3, 1, 1, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    with winograd(tile):
        out = ops.fused_eval(x, ws, bs, wt, bt, [1, 1, 1], padding)
    assert_close(out, reference.fused_eval(x, ws, bs, wt, bt, [1, 1, 1], padding), 1e-12, "fused_eval")


@pytest.mark.parametrize("tile", TILES)
def test_gradcheck_float64(tile):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        y, mean, var = ops.spatial_conv_stats(x, w, b, [1, 1], [1, 2])
        return y, mean, var

    with winograd(tile):
        assert gradcheck(f, (x, w, b))


@pytest.mark.parametrize("tile", TILES)
def test_statistics_with_large_mean(tile):
    """A DC offset 1000x the spread: a one-pass sum of squares would lose the variance in
    float32; the per-batch two-pass moments (shifted first pass) keep it."""
    g = torch.Generator().manual_seed(5)
    x = 1000 + torch.randn(2, 4, 3, 10, 10, generator=g)
    w = torch.randn(6, 4, 1, 3, 3, generator=g) / 6
    with winograd(tile):
        y, mean, var = ops.spatial_conv_stats(x, w, None, [1, 1], [0, 0])
    _, ref_mean, ref_var = reference.spatial_conv_stats(x.double(), w.double(), None, [1, 1], [0, 0])
    assert_close(mean, ref_mean, 1e-6, "mean")
    assert_close(var, ref_var, 1e-3, "var")


def test_concurrent_calls_share_scratch_safely():
    """Ops running at once in several Python threads (the scratch pool is shared) give the
    results of the same calls run one at a time."""
    g = torch.Generator().manual_seed(6)
    inputs = [(torch.randn(2, 8, 3, 20 + i, 17, generator=g), torch.randn(12, 8, 1, 3, 3, generator=g))
              for i in range(4)]
    serial = [ops.spatial_conv_stats(x, w, None, [1, 1], [1, 1]) for x, w in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            results[i] = ops.spatial_conv_stats(*inputs[i], None, [1, 1], [1, 1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def _spatial_results(x, w, padding):
    y, mean, var = ops.spatial_conv_stats(x, w, None, [1, 1], padding)
    gy = torch.ones_like(y)
    zero = torch.zeros_like(mean)
    return (y, mean, var, *OPS.spatial_conv_backward(gy, x, w, y, mean, zero, zero, [1, 1], padding,
                                                     [True, True, False])[:2])


@pytest.mark.parametrize("frames,size,expected", [
    (8, 28, "4"),   # 8 frames of 7x7 F(4x4) tiles: 392 >= 128
    (8, 14, "4"),   # R(2+1)D-18's conv4_x: 128 tiles
    (8, 12, "2"),   # 72 tiles: too few for efficient F(4x4) GEMMs
    (64, 5, "2"),   # 256 tiles, but 2x2 of them cover 8x8 for 5x5: no fewer products
], ids=["many-tiles", "conv4_x", "few-tiles", "no-saving"])
def test_automatic_tile_choice(frames, size, expected):
    """The automatic choice gives bitwise the results of the tile size it should pick
    (F(4x4) from 128 tiles when it saves a quarter of the products)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 3, frames, size, size, generator=g)
    w = torch.randn(4, 3, 1, 3, 3, generator=g)
    with winograd("auto"):
        auto = _spatial_results(x, w, [1, 1])
    with winograd(expected):
        forced = _spatial_results(x, w, [1, 1])
    for a, b in zip(auto, forced):
        assert torch.equal(a, b)


def test_bad_setting_is_an_error():
    x, w = torch.randn(1, 2, 1, 5, 5), torch.randn(3, 2, 1, 3, 3)
    with winograd("8"), pytest.raises(ValueError, match="R2P1D_WINOGRAD to be auto, 2, 4 or off"):
        ops.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
