"""The CUDA tensor-core kernels on a GPU (skipped without one; `make gpu-check` runs them):
every op against the float64 reference and against the CPU emulator of the same kernels
(tests/test_tc_emulated.py), both kernel families (R2P1D_CUDA_KERNELS), the module on
random shapes, opcheck, torch.compile, layouts, determinism, and that no cuDNN/cuBLAS
kernel runs inside the block."""
import re

import pytest
import torch
from hypothesis import given, settings
from torch.library import opcheck
from torch.profiler import ProfilerActivity, profile

import r2p1d_ext
from r2p1d_ext import ops, reference

from conftest import HAS_CUDA, assert_close, make_pair, random_input, spatial_reference
from tc_emulation import EMU
from test_module import _run, block_cases
from test_tc_emulated import (MODULE_TOL, SPATIAL_CASES, SPATIAL_NAMES, TC_TOL, TEMPORAL_CASES, _rand,
                              _spatial_inputs, _temporal_inputs, _temporal_reference)

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
OPS = torch.ops.r2p1d
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# The emulator plans for this GPU (an H100 SXM has 132 SMs, a PCIe one 114, a MIG slice
# fewer), so that it runs the very tiles and K splits the GPU runs.
SM_COUNT = torch.cuda.get_device_properties(0).multi_processor_count if HAS_CUDA else 132


def _emulator_tol(t):
    """The GPU and the emulator multiply the same rounded operands and round every
    multiply-add once (fma, csrc/tc/portable.h); only the MMA's float32 accumulation order
    differs, which may move a bf16/fp16 result by one rounding step."""
    return 2 ** -7 if t.dtype in (torch.bfloat16, torch.float16) else 1e-4


@pytest.fixture(params=["tc", "direct"])
def kernels(request, monkeypatch):
    monkeypatch.setenv("R2P1D_CUDA_KERNELS", request.param)
    return request.param


def _tol(dtype, kernels):
    if kernels == "direct":  # float accumulation of the unrounded operands
        return {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, TC_TOL.get(dtype))
    return TC_TOL[dtype]


def _cuda(*ts):
    return [t.cuda() if isinstance(t, torch.Tensor) else t for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SPATIAL_CASES)
def test_spatial_ops(case, dtype, kernels):
    x, w, b, st, pd, gy, gmean, gvar = _spatial_inputs(case, dtype)
    y, mean, var = ops.spatial_conv_stats(*_cuda(x, w, b), st, pd)
    assert y.is_contiguous(memory_format=torch.channels_last_3d), "CUDA results are channels-last"
    grads = OPS.spatial_conv_backward(*_cuda(gy, x, w), y, mean, *_cuda(gmean, gvar), st, pd, [True] * 3)
    got = (y, mean, var, *grads)
    want = spatial_reference(x, w, b, st, pd, gy, gmean, gvar)
    names = SPATIAL_NAMES
    for name, a, r in zip(names, got, want):
        assert_close(a, r, _tol(dtype, kernels), f"{case} {name}")
    if kernels == "tc":
        y_e, mean_e, var_e = EMU.spatial_conv_stats(x, w, b, st, pd, sm_count=SM_COUNT)
        grads_e = EMU.spatial_conv_backward(gy, x, w, y.cpu(), mean.cpu(), gmean, gvar, st, pd, [True] * 3,
                                            sm_count=SM_COUNT)
        for name, a, e in zip(names, got, (y_e, mean_e, var_e, *grads_e)):
            assert_close(a, e, _emulator_tol(a), f"{case} {name} vs emulator")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TEMPORAL_CASES)
def test_temporal_ops(case, dtype, kernels):
    y, mean, scale, shift, w, b, st, pt = _temporal_inputs(case, dtype)
    out = ops.temporal_conv_bnrelu(*_cuda(y, mean, scale, shift, w, b), st, pt)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    grad_out = _rand(out.shape, dtype, torch.Generator().manual_seed(2))
    grads = OPS.temporal_conv_bnrelu_backward(*_cuda(grad_out, y, mean, scale, shift, w), st, pt, [True] * 6)
    ref, want = _temporal_reference(y, mean, scale, shift, w, b, st, pt, grad_out)
    assert_close(out, ref, _tol(dtype, kernels), f"{case} out")
    names = ["y", "mean", "scale", "shift", "weight", "bias"]
    for name, a, r in zip(names, grads, want):
        assert_close(a, r, _tol(dtype, kernels), f"{case} grad {name}")
    if kernels == "tc":
        assert_close(out, EMU.temporal_conv_bnrelu(y, mean, scale, shift, w, b, st, pt, sm_count=SM_COUNT),
                     _emulator_tol(out),
                     "out vs emulator")
        emu = EMU.temporal_conv_bnrelu_backward(grad_out, y, mean, scale, shift, w, st, pt, [True] * 6,
                                                sm_count=SM_COUNT)
        for name, a, e in zip(names, grads, emu):
            assert_close(a, e, _emulator_tol(a), f"{case} grad {name} vs emulator")


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_fused_eval(dtype, kernels):
    g = torch.Generator().manual_seed(3)
    x, ws, bs = _rand((2, 8, 5, 9, 7), dtype, g), _rand((16, 8, 1, 3, 3), dtype, g, 0.3), _rand((16,), dtype, g)
    wt, bt = _rand((12, 16, 3, 1, 1), dtype, g, 0.3), _rand((12,), dtype, g)
    out = ops.fused_eval(*_cuda(x, ws, bs, wt, bt), [2, 2, 1], [1, 1, 0])
    ref = reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), [2, 2, 1], [1, 1, 0])
    assert_close(out, ref, _tol(dtype, kernels) if dtype != torch.float64 else 1e-10, "fused_eval")


def test_layer_sized_problem_with_k_splits():
    """A conv2_x block at batch 2 (12544 output pixels, 144 mid channels): large tiles,
    split-K weight gradients, every operand in 16-byte chunks."""
    ref, fused = make_pair(64, 64, 3, 1, 1, device="cuda", dtype=torch.bfloat16)
    fx, rx = random_input((2, 64, 8, 28, 28), torch.bfloat16, "cuda", torch.channels_last_3d)
    out = fused(fx)
    out.float().square().sum().backward()
    want = ref(rx)
    want.square().sum().backward()
    assert_close(out, want, 2e-2, "output")
    assert_close(fx.grad, rx.grad, 3e-2, "grad input")
    assert_close(fused.spatial_conv.weight.grad, ref.spatial_conv.weight.grad, 3e-2, "grad spatial weight")
    assert_close(fused.temporal_conv.weight.grad, ref.temporal_conv.weight.grad, 3e-2, "grad temporal weight")


def test_deterministic():
    """Fixed plans, fixed-order reductions, no atomics: bitwise equal runs."""
    _, fused = make_pair(16, 24, 3, (1, 2, 2), 1, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 16, 6, 20, 20, device="cuda", dtype=torch.bfloat16).requires_grad_()
    results = []
    for _ in range(2):
        x.grad = None
        fused.zero_grad()
        out = fused(x)
        out.float().sum().backward()
        results.append([out.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in fused.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(derandomize=True)  # as in tests/test_tc_emulated.py
@given(case=block_cases(min_per_channel=32))
def test_module_matches_reference(case, dtype, train):
    """The module's random-shape test (tests/test_module.py) on the tensor-core kernels."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R2P1D_CUDA_KERNELS", "tc")
        _run(case, dtype, "cuda", train, tol=MODULE_TOL[dtype], tf32=dtype == torch.float32)


def test_output_format_follows_input(kernels):
    block = r2p1d_ext.SpatioTemporalConv(8, 16, 3, padding=1).cuda().to(torch.bfloat16)
    x = torch.randn(2, 8, 4, 10, 10, device="cuda", dtype=torch.bfloat16)
    assert block(x).is_contiguous()
    assert block(x.to(memory_format=torch.channels_last_3d)).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("tile,index", [("large", 0), ("small", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5)])
def test_each_tile_shape_matches_the_emulator(tile, index, monkeypatch):
    """R2P1D_CUDA_TILE forces the GPU's tile shape; the emulator forced to the same shape
    runs the same CTAs and K splits."""
    monkeypatch.setenv("R2P1D_CUDA_KERNELS", "tc")
    monkeypatch.setenv("R2P1D_CUDA_TILE", tile)
    x, w, b, st, pd, gy, gmean, gvar = _spatial_inputs("past-tile", torch.bfloat16)
    y, mean, _ = ops.spatial_conv_stats(*_cuda(x, w, b), st, pd)
    grads = OPS.spatial_conv_backward(*_cuda(gy, x, w), y, mean, *_cuda(gmean, gvar), st, pd, [True] * 3)
    y_e, mean_e, _ = EMU.spatial_conv_stats(x, w, b, st, pd, SM_COUNT, index)
    grads_e = EMU.spatial_conv_backward(gy, x, w, y_e, mean_e, gmean, gvar, st, pd, [True] * 3, SM_COUNT, index)
    for name, a, e in zip(["y", "grad x", "grad w", "grad b"], (y, *grads), (y_e, *grads_e)):
        assert_close(a, e, _emulator_tol(a), f"{tile} tile: {name} vs emulator")


def test_tile_setting_is_checked(monkeypatch):
    monkeypatch.setenv("R2P1D_CUDA_KERNELS", "tc")
    monkeypatch.setenv("R2P1D_CUDA_TILE", "medium")
    x, w, b, st, pd, *_ = _spatial_inputs("3x3", torch.bfloat16)
    with pytest.raises(ValueError, match=r"R2P1D_CUDA_TILE to be auto, large, small or a tile index 0-5, but got 'medium'"):
        ops.spatial_conv_stats(*_cuda(x, w, b), st, pd)


def test_kernels_setting_is_checked(monkeypatch):
    monkeypatch.setenv("R2P1D_CUDA_KERNELS", "fast")
    x = torch.randn(1, 2, 2, 4, 4, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3, 2, 1, 3, 3, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="R2P1D_CUDA_KERNELS"):
        ops.spatial_conv_stats(x, w, None, [1, 1], [1, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_opcheck(dtype):
    g = torch.Generator().manual_seed(8)
    x, w, b = _cuda(_rand((2, 8, 3, 6, 5), dtype, g), _rand((16, 8, 1, 3, 3), dtype, g), _rand((16,), dtype, g))
    opcheck(OPS.spatial_conv_stats.default, (x, w, b, [1, 1], [1, 1]))
    y, mean, scale, shift, wt, bt, st, pt = _cuda(*_temporal_inputs("k3", dtype))
    opcheck(OPS.temporal_conv_bnrelu.default, (y, mean, scale, shift, wt, bt, st, pt))
    out = ops.temporal_conv_bnrelu(y, mean, scale, shift, wt, bt, st, pt)
    opcheck(OPS.temporal_conv_bnrelu_backward.default,
            (torch.randn_like(out), y, mean, scale, shift, wt, st, pt, [True] * 6))
    ys, ms, _ = ops.spatial_conv_stats(x, w, b, [1, 1], [1, 1])
    opcheck(OPS.spatial_conv_backward.default,
            (torch.randn_like(ys), x, w, ys, ms, torch.randn_like(ms), torch.randn_like(ms), [1, 1], [1, 1],
             [True, True, True]))
    opcheck(OPS.fused_eval.default, (x, w, b, wt, bt, [1, 1, 1], [1, 1, 1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_torch_compile(dtype):
    torch._dynamo.reset()
    _, fused = make_pair(8, 16, 3, (1, 2, 2), 1, device="cuda", dtype=dtype)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(2, 8, 4, 12, 12, device="cuda", dtype=dtype).to(memory_format=torch.channels_last_3d)
    for train in (True, False):
        fused.train(train)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_e, out_c = fused(xe), compiled(xc)
        assert_close(out_c, out_e, 1e-3, f"compiled output (train={train})")
        out_e.float().square().sum().backward()
        out_c.float().square().sum().backward()
        assert_close(xc.grad, xe.grad, 1e-3, "compiled input grad")


# cuDNN, cuBLAS/cuBLASLt (and their CUTLASS-built kernels), ATen's convolutions and batch norm
LIBRARY = re.compile(r"conv|cudnn|cublas|gemm|xmma|batch_norm|im2col|col2im|sm80_|sm90_", re.IGNORECASE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_only_our_kernels_run(dtype):
    fused = r2p1d_ext.SpatioTemporalConv(16, 32, 3, (1, 2, 2), 1).cuda().to(dtype)
    x = torch.randn(2, 16, 4, 20, 20, device="cuda", dtype=dtype).to(memory_format=torch.channels_last_3d)
    x.requires_grad_()

    def step():
        fused.train()
        fused(x).float().square().sum().backward()
        fused.eval()
        with torch.no_grad():
            fused(x)
        torch.cuda.synchronize()

    step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
    names = {e.name for e in prof.events()}
    assert any("igemm_kernel" in n for n in names), "the tensor-core kernels did not run"
    library = sorted(n for n in names if LIBRARY.search(n) and "r2p1d" not in n)
    assert not library, f"library kernels ran inside the fused block: {library}"
