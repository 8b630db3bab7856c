"""The CUDA tensor-core kernels' code, checked on the CPU through the emulator
(csrc/emulate/): each op and the whole module in bf16, fp16 and fp32 (TF32) against the
float64 reference, both tile shapes, K splits, odd channel counts, strides, tile-boundary
sizes, the 16-byte and element-wise load paths, and the MMA fragment maps against CuTe.
What the emulator cannot check (the asm, shared-memory races, real speed) needs a GPU:
tests/test_cuda_tc.py."""
import os
import shutil
import subprocess
import pytest
import torch
from hypothesis import given, settings

import r2p1d_ext  # noqa: F401  (loads the library)
from r2p1d_ext import module as module_mod
from r2p1d_ext import reference

from conftest import assert_close, cutlass_include, spatial_reference
from tc_emulation import EMU, EmulatedOps
from test_module import _run, block_cases

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# bf16/fp16 as docs/testing.md; float32 runs as TF32 (10-bit mantissa operands).
TC_TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 3e-3}
# Through the whole module, whose gradients sum many rounded products and cancel, TF32 is
# held to fp16's tolerance (the same 10-bit mantissa).
MODULE_TOL = {**TC_TOL, torch.float32: 1e-2}
TILES = [0, 1]  # 128x128 and 64x64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


# (C, M, kernel, stride, padding, input shape): 16-byte loads; the stem's 3 channels and
# odd counts (element-wise loads); stride 2; sizes one past a 64/128 tile.
SPATIAL_CASES = {
    "3x3": (8, 16, 3, 1, 1, (2, 8, 3, 9, 7)),
    "odd-channels-stride2": (3, 5, 5, 2, 2, (2, 3, 2, 11, 9)),
    "stride2": (16, 12, 3, 2, 1, (1, 16, 2, 13, 10)),
    "past-tile": (8, 65, 3, 1, 1, (1, 8, 1, 13, 10)),  # 130 output pixels, 65 channels
    "mid45-stem": (3, 45, 7, 2, 3, (1, 3, 2, 14, 14)),
}

# (M, O, kt, stride, padding, y shape)
TEMPORAL_CASES = {
    "k3": (16, 12, 3, 1, 1, (2, 16, 5, 4, 3)),
    "stride2": (16, 12, 3, 2, 1, (2, 16, 5, 4, 3)),
    "mid45-to-64": (45, 64, 3, 1, 1, (1, 45, 4, 5, 5)),
    "T1": (8, 8, 3, 1, 1, (2, 8, 1, 3, 3)),
    "k5-stride3-pad4": (24, 20, 5, 3, 4, (1, 24, 7, 2, 5)),
    "past-tile": (130, 129, 3, 1, 1, (1, 130, 3, 5, 5)),
}


def _spatial_inputs(case, dtype):
    """x, w, b, stride, padding, grad_y, grad_mean, grad_var of a SPATIAL_CASES case."""
    C, M, k, s, p, shape = SPATIAL_CASES[case]
    g = torch.Generator().manual_seed(0)
    x, w, b = _rand(shape, dtype, g), _rand((M, C, 1, k, k), dtype, g, 0.3), _rand((M,), dtype, g)
    out = [(n + 2 * p - k) // s + 1 for n in shape[3:]]
    gy = _rand((shape[0], M, shape[2], *out), dtype, g)
    return x, w, b, [s, s], [p, p], gy, torch.randn(M, generator=g), torch.randn(M, generator=g)


SPATIAL_NAMES = ["y", "mean", "var", "grad x", "grad w", "grad b"]


@pytest.mark.parametrize("tile", TILES, ids=["large", "small"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SPATIAL_CASES)
def test_spatial_ops(case, dtype, tile):
    _check_spatial_ops(case, dtype, tile)


def _check_spatial_ops(case, dtype, tile):
    """Both spatial ops on the emulator with tile shape `tile` against float64."""
    x, w, b, st, pd, gy, gmean, gvar = _spatial_inputs(case, dtype)
    y, mean, var = EMU.spatial_conv_stats(x, w, b, st, pd, 132, tile)
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and y.dtype == dtype
    grads = EMU.spatial_conv_backward(gy, x, w, y, mean, gmean, gvar, st, pd, [True] * 3, 132, tile)
    want = spatial_reference(x, w, b, st, pd, gy, gmean, gvar)
    for name, got, ref in zip(SPATIAL_NAMES, (y, mean, var, *grads), want):
        assert_close(got, ref, TC_TOL[dtype], f"{case} {name}")


def _temporal_inputs(case, dtype, seed=1):
    M, O, kt, st, pt, shape = TEMPORAL_CASES[case]
    g = torch.Generator().manual_seed(seed)
    y = _rand(shape, dtype, g)
    mean, scale = torch.randn(M, generator=g) * 0.3, torch.rand(M, generator=g) + 0.5
    shift = torch.randn(M, generator=g) * 0.3
    return y, mean, scale, shift, _rand((O, M, kt, 1, 1), dtype, g, 0.3), _rand((O,), dtype, g), st, pt


def _temporal_reference(y, mean, scale, shift, w, b, st, pt, grad_out):
    inputs = [t.double().requires_grad_() for t in (y, mean, scale, shift, w, b)]
    out = reference.temporal_conv_bnrelu(*inputs, st, pt)
    return out, torch.autograd.grad(out, inputs, grad_out.double())


@pytest.mark.parametrize("tile", TILES, ids=["large", "small"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TEMPORAL_CASES)
def test_temporal_ops(case, dtype, tile):
    _check_temporal_ops(case, dtype, tile)


def _check_temporal_ops(case, dtype, tile):
    """Both temporal ops on the emulator with tile shape `tile` against float64."""
    y, mean, scale, shift, w, b, st, pt = _temporal_inputs(case, dtype)
    out = EMU.temporal_conv_bnrelu(y, mean, scale, shift, w, b, st, pt, 132, tile)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and out.dtype == dtype
    grad_out = _rand(out.shape, dtype, torch.Generator().manual_seed(2))
    grads = EMU.temporal_conv_bnrelu_backward(grad_out, y, mean, scale, shift, w, st, pt, [True] * 6, 132, tile)
    ref, want = _temporal_reference(y, mean, scale, shift, w, b, st, pt, grad_out)
    assert_close(out, ref, TC_TOL[dtype], f"{case} out")
    for name, got, r in zip(["y", "mean", "scale", "shift", "weight", "bias"], grads, want):
        assert_close(got, r, TC_TOL[dtype], f"{case} grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride,padding", [([1, 1, 1], [1, 1, 1]), ([2, 2, 1], [1, 1, 0])])
def test_fused_eval(dtype, stride, padding):
    g = torch.Generator().manual_seed(3)
    x, ws, bs = _rand((2, 8, 5, 9, 7), dtype, g), _rand((16, 8, 1, 3, 3), dtype, g, 0.3), _rand((16,), dtype, g)
    wt, bt = _rand((12, 16, 3, 1, 1), dtype, g, 0.3), _rand((12,), dtype, g)
    out = EMU.fused_eval(x, ws, bs, wt, bt, stride, padding)
    ref = reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), stride, padding)
    assert_close(out, ref, TC_TOL[dtype], "fused_eval")
    # The residual add and ReLU of a whole-network inference, after the kernels.
    residual = _rand(tuple(out.shape), dtype, g)
    out = EMU.fused_eval(x, ws, bs, wt, bt, stride, padding, residual, True)
    ref = reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), stride, padding, residual.double(), True)
    assert_close(out, ref, TC_TOL[dtype], "fused_eval + residual, relu")


def test_weight_gradients_split_k():
    """The weight gradients split K (pixels) across CTAs when there are few output tiles;
    the splits' partials are summed in order. Here 2048 pixels make 4 splits."""
    g = torch.Generator().manual_seed(4)
    x, w = _rand((2, 8, 4, 16, 16), torch.bfloat16, g), _rand((16, 8, 1, 3, 3), torch.bfloat16, g, 0.3)
    plan = EMU.plan("spatial_wgrad", [2, 8, 4, 16, 16, 16, 3, 3, 1, 1, 1, 1], torch.bfloat16)
    assert plan[3] == 4, f"expected 4 K splits, plan {plan}"
    y, mean, _ = EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    gy = _rand(y.shape, torch.bfloat16, g)
    zeros = torch.zeros(16)
    _, gw, gb = EMU.spatial_conv_backward(gy, x, w, y, mean, zeros, zeros, [1, 1], [1, 1], [False, True, True])
    _, _, _, _, rgw, _ = spatial_reference(x, w, torch.zeros(16), [1, 1], [1, 1], gy, zeros, zeros)
    assert_close(gw, rgw, TC_TOL[torch.bfloat16], "split-K weight gradient")
    assert_close(gb, gy.double().sum((0, 2, 3, 4)), TC_TOL[torch.bfloat16], "split-K bias gradient")
    # One split (a GPU of one SM wants no more CTAs) gives the same values up to rounding.
    _, gw1, _ = EMU.spatial_conv_backward(gy, x, w, y, mean, zeros, zeros, [1, 1], [1, 1], [False, True, True], 1)
    assert_close(gw1, gw, 1e-5, "one split vs four")


def test_forwards_split_k():
    """A forward whose grid is under one wave splits K across CTAs into float partials that
    a finalize pass sums in a fixed order: the results match the reference, are the same bits
    on every run, and equal the unsplit ones (a GPU of one SM) up to rounding."""
    g = torch.Generator().manual_seed(8)
    dtype = torch.bfloat16
    x, w = _rand((1, 128, 2, 4, 4), dtype, g), _rand((16, 128, 1, 3, 3), dtype, g, 0.1)
    plan = EMU.plan("spatial_fprop", [1, 128, 2, 4, 4, 16, 3, 3, 1, 1, 1, 1], dtype)
    assert plan[3] >= 2, f"expected K splits, plan {plan}"
    zeros = torch.zeros(16)
    got = EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    want = spatial_reference(x, w, zeros, [1, 1], [1, 1], torch.zeros(1, 16, 2, 4, 4, dtype=dtype), zeros, zeros)
    for name, a, r in zip(["y", "mean", "var"], got, want):
        assert_close(a, r, TC_TOL[dtype], f"split-K spatial forward {name}")
    again = EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    assert all(torch.equal(a, b_) for a, b_ in zip(got, again)), "split-K spatial forward not deterministic"
    one = EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1], 1)
    assert EMU.plan("spatial_fprop", [1, 128, 2, 4, 4, 16, 3, 3, 1, 1, 1, 1], dtype, 1)[3] == 1
    for name, a, b_ in zip(["y", "mean", "var"], got, one):
        assert_close(a, b_, 1e-2 if name == "y" else 1e-4, f"split vs unsplit {name}")

    y, mean, scale, shift = _rand((1, 384, 3, 2, 2), dtype, g), torch.randn(384, generator=g) * 0.3, \
        torch.rand(384, generator=g) + 0.5, torch.randn(384, generator=g) * 0.3
    wt, bt = _rand((8, 384, 3, 1, 1), dtype, g, 0.1), _rand((8,), dtype, g)
    plan = EMU.plan("temporal_fprop", [1, 384, 3, 2, 2, 8, 3, 1, 1], dtype)
    assert plan[3] >= 2, f"expected K splits, plan {plan}"
    out = EMU.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, 1, 1)
    ref, _ = _temporal_reference(y, mean, scale, shift, wt, bt, 1, 1, torch.zeros(1, 8, 3, 2, 2, dtype=dtype))
    assert_close(out, ref, TC_TOL[dtype], "split-K temporal forward")
    assert torch.equal(out, EMU.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, 1, 1))
    assert_close(out, EMU.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, 1, 1, 1), 1e-2, "split vs unsplit")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("tile", range(2, 6))
def test_every_tile_shape(tile, dtype):
    """The tile shapes past the two of test_spatial_ops/test_temporal_ops (csrc/tc/plan.h's
    lists; an index past a list's end runs the plan's choice) on the past-tile cases."""
    _check_spatial_ops("past-tile", dtype, tile)
    _check_temporal_ops("past-tile", dtype, tile)


def _misaligned(t):
    """The same values, channels-last, starting 2 bytes past a 16-byte boundary: the
    kernels must take their element-wise loads."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]
    out = flat.view(t.shape[0], *t.shape[2:], t.shape[1]).permute(0, 4, 1, 2, 3)
    out.copy_(t)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and out.data_ptr() % 16 != 0
    return out


def test_element_loads_equal_vector_loads():
    """The 16-byte chunk loads and the element-wise loads put the same values in shared
    memory, so the results are bitwise equal."""
    dtype = torch.bfloat16
    y, mean, scale, shift, w, b, st, pt = _temporal_inputs("k3", dtype)
    out = EMU.temporal_conv_bnrelu(y, mean, scale, shift, w, b, st, pt)
    assert torch.equal(EMU.temporal_conv_bnrelu(_misaligned(y), mean, scale, shift, w, b, st, pt), out)
    go = _rand(out.shape, dtype, torch.Generator().manual_seed(5))
    mask = [True] * 6
    want = EMU.temporal_conv_bnrelu_backward(go, y, mean, scale, shift, w, st, pt, mask)
    got = EMU.temporal_conv_bnrelu_backward(_misaligned(go), _misaligned(y), mean, scale, shift, w, st, pt, mask)
    for a, b_ in zip(got, want):
        assert torch.equal(a, b_)
    g = torch.Generator().manual_seed(6)
    x, ws = _rand((2, 8, 3, 9, 7), dtype, g), _rand((16, 8, 1, 3, 3), dtype, g)
    yy, m, v = EMU.spatial_conv_stats(x, ws, None, [1, 1], [1, 1])
    y2, m2, v2 = EMU.spatial_conv_stats(_misaligned(x), ws, None, [1, 1], [1, 1])
    assert torch.equal(yy, y2) and torch.equal(m, m2) and torch.equal(v, v2)
    gy, gm, gv = _rand(yy.shape, dtype, g), torch.randn(16, generator=g), torch.randn(16, generator=g)
    want = EMU.spatial_conv_backward(gy, x, ws, yy, m, gm, gv, [1, 1], [1, 1], [True] * 3)
    got = EMU.spatial_conv_backward(_misaligned(gy), _misaligned(x), ws, _misaligned(yy), m, gm, gv, [1, 1], [1, 1],
                                    [True] * 3)
    for a, b_ in zip(got, want):
        assert torch.equal(a, b_)


def test_contiguous_input_same_result():
    """NCDHW inputs are converted to channels-last first: the same values."""
    g = torch.Generator().manual_seed(7)
    x, w = _rand((2, 8, 3, 9, 7), torch.float16, g), _rand((16, 8, 1, 3, 3), torch.float16, g)
    a = EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    b = EMU.spatial_conv_stats(x.contiguous(memory_format=torch.channels_last_3d), w, None, [1, 1], [1, 1])
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(derandomize=True)
@given(case=block_cases(min_per_channel=32))
def test_module_through_tensor_core_path(case, dtype, train):
    """The module's hypothesis test (tests/test_module.py) with its ops on the emulated
    tensor-core kernels, as tests/test_cuda_tc.py runs it on a GPU. Derandomized: on tiny
    random shapes, reduced precision meets rare cases where BatchNorm's backward cancels a
    gradient down to its rounding (HYPOTHESIS_PROFILE=stress finds about one in 500, as far
    from float64 as 8x eager's error); CI runs the same examples every time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module_mod, "ops", EmulatedOps())
        _run(case, dtype, "cpu", train, tol=MODULE_TOL[dtype], tf32=dtype == torch.float32)


# ------------------------------------------------------------------ fragment maps vs CuTe
@pytest.mark.skipif(cutlass_include() is None or shutil.which("nvcc") is None,
                    reason="needs the nvidia-cutlass headers and nvcc")
def test_fragment_maps_match_cute(tmp_path):
    """csrc/tc/fragments.h's lane -> element maps equal CuTe's MMA_Traits for the three
    MMA atoms, and its ldmatrix emulation CuTe's Copy_Traits of the four LDSM atoms the
    kernels use (independent statements of the PTX layouts). nvcc compiles the
    host program (it knows its toolkit's include folders); no GPU is needed."""
    exe = tmp_path / "fragment_layouts"
    cmd = ["nvcc", "-std=c++17", f"-I{cutlass_include()}", f"-I{os.path.join(ROOT, 'csrc')}",
           os.path.join(ROOT, "tests", "cpp", "fragment_layouts.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.count(" 0 mismatches") == 7, run.stdout
