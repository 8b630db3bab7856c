"""The fused module against the pure-PyTorch reference: forward, every gradient and the
running statistics, on random shapes (hypothesis), in train and eval, both memory formats."""
import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import r2p1d_ext
from r2p1d_ext import reference
from r2p1d_ext._args import default_mid_channels

from conftest import (CPU_BF16_PATHS, DEVICES, HAS_CUDA, TOL, _errors, assert_close, block_results, cpu_kernels,
                      make_pair, random_input, round_tf32)


@st.composite
def block_cases(draw, min_per_channel=4):
    cin, cout = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    kernel = tuple(draw(st.sampled_from([1, 3, 5, 7])) for _ in range(3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(3))
    padding = tuple(draw(st.integers(0, k // 2 + 1)) for k in kernel)
    # Input at least the kernel size once padded (T == kernel with padding included).
    size = [draw(st.integers(max(1, k - 2 * p), max(1, k - 2 * p) + 5)) for k, p in zip(kernel, padding)]
    batch = draw(st.integers(1, 3))
    per_sample = size[0] * ((size[1] + 2 * padding[1] - kernel[1]) // stride[1] + 1) * \
        ((size[2] + 2 * padding[2] - kernel[2]) // stride[2] + 1)
    # Training BatchNorm needs more than one value per channel; with 2 or 3 its input
    # gradient is almost all cancellation (relative errors of 1e-4 even for PyTorch's own
    # float32 block), so every case has at least 4. In bfloat16/float16 the intermediate
    # y and its gradient are stored rounded (as in eager PyTorch), and that cancellation
    # amplifies their rounding past 1e-2 unless a channel has some 32 values: the
    # reduced-precision tests ask for that many (min_per_channel).
    batch = max(batch, -(-min_per_channel // per_sample))
    mid = None if default_mid_channels(cin, cout, kernel) > 0 else draw(st.integers(1, 4))
    return dict(seed=draw(st.integers(0, 2**31 - 1)), cin=cin, cout=cout, kernel=kernel, stride=stride, padding=padding,
                shape=(batch, cin, *size), bias=draw(st.booleans()), mid=mid,
                channels_last=draw(st.booleans()))


class _Rounded(torch.autograd.Function):
    """A tensor as the fused block holds it: its values (`values`) and its gradient
    (`grads`) rounded by `rnd`."""

    @staticmethod
    def forward(ctx, t, rnd, values, grads):
        ctx.rnd, ctx.grads = rnd, grads
        return rnd(t) if values else t.clone()

    @staticmethod
    def backward(ctx, grad):
        return (ctx.rnd(grad) if ctx.grads else grad), None, None, None


def _taps_touching_data(case, dim):
    """Kernel taps along `dim` (1: H, 2: W) that read the input, not only padding."""
    k, s, p, size = case["kernel"][dim], case["stride"][dim], case["padding"][dim], case["shape"][dim + 2]
    out = (size + 2 * p - k) // s + 1
    return sum(any(0 <= o * s - p + i < size for o in range(out)) for i in range(k))


def _forward_backward(module, x, train, seed, rounding=None):
    """Forward and backward with a seeded output gradient, its values rounded as the fused
    block's (`rounding`) so that both blocks receive the same gradient."""
    module.train(train)
    out = module(x)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    if rounding is not None:
        grad = rounding(grad)
    out.backward(grad.to(device=out.device, dtype=out.dtype))
    return block_results(module, x, out)


def _reference_rounding(ref, rx, dtype, tf32, train):
    """Make the float64 reference round where the fused block does, so that what the
    comparison sees is the kernels' arithmetic, not rounding that BatchNorm's backward
    amplifies where a channel's or a pixel's few terms cancel. Returns the hooks and the
    rounding of the output gradient.

    bfloat16/float16: y and its gradient are stored in `dtype` (as in eager PyTorch), and the
    activation z enters the temporal conv in it (z's gradient stays float32 in the kernels).
    TF32 (float32 on the tensor cores): every GEMM operand is rounded to TF32: the input
    and the weights, z, the gradient reaching y and the output gradient; y itself is float32.
    Eval (running statistics): the block folds BatchNorm into the spatial weight and bias in
    float32 and casts them to `dtype` (then TF32 for float32); the reference takes the
    weight and running mean that give exactly those folded values, and y is not stored."""
    if tf32:
        rnd = round_tf32
    elif dtype in (torch.float16, torch.bfloat16):
        rnd = lambda t: t.to(dtype).to(t.dtype)  # noqa: E731
    else:
        return [], None
    fold = not train and ref.bn.running_mean is not None
    with torch.no_grad():
        if tf32:
            rx.copy_(rnd(rx))
            ref.temporal_conv.weight.copy_(rnd(ref.temporal_conv.weight))
        if fold:
            bn, conv = ref.bn, ref.spatial_conv
            view = lambda t: t.view(-1, 1, 1, 1, 1)  # noqa: E731
            scale32 = torch.rsqrt(bn.running_var.float() + bn.eps) * bn.weight.float()
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            w_f = (conv.weight.float() * view(scale32)).to(dtype)
            b_f = ((bias.float() - bn.running_mean.float()) * scale32 + bn.bias.float()).to(dtype)
            if tf32:
                w_f = rnd(w_f)  # the kernels round the weight operand; the bias is added in float32
            scale64 = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.copy_(w_f.double() / view(scale64))
            bn.running_mean.copy_(bias - (b_f.double() - bn.bias) / scale64)
        elif tf32:
            ref.spatial_conv.weight.copy_(rnd(ref.spatial_conv.weight))
    # Where the gradient is rounded: at y in training (the stored grad_y), at BatchNorm's
    # output in eval (the folded block's y is that output, and its gradient the operand).
    rounded_grad = ref.bn if fold else ref.spatial_conv
    store_y = not tf32 and not fold
    hooks = [rounded_grad.register_forward_hook(lambda mod, inp, out: _Rounded.apply(out, rnd, store_y, True)),
             ref.relu.register_forward_hook(lambda mod, inp, out: _Rounded.apply(out, rnd, True, False))]
    return hooks, rnd


def _run(case, dtype, device, train, tol=None, tf32=False):
    """The fused block in `dtype` on `device` against the float64 reference of the same
    inputs, after a forward and a backward: the output, every gradient, the running
    statistics. tf32: the fused block computes float32 on the tensor cores (TF32)."""
    torch.manual_seed(case["seed"])
    ref, fused = make_pair(case["cin"], case["cout"], case["kernel"], case["stride"],
                           case["padding"], bias=case["bias"], mid_channels=case["mid"],
                           device=device, dtype=dtype)
    fmt = torch.channels_last_3d if case["channels_last"] else torch.contiguous_format
    fx, rx = random_input(case["shape"], dtype, device, fmt)
    pre = []  # the reference's BatchNorm output: the ReLU's input
    hooks, rounding = _reference_rounding(ref, rx, dtype, tf32, train)
    hooks.append(ref.bn.register_forward_hook(lambda mod, inp, out: pre.append(out.detach())))
    want = _forward_backward(ref, rx, train, case["seed"], rounding)
    for hook in hooks:
        hook.remove()
    if dtype != torch.float64:
        # A ReLU input within rounding of 0 may take either side of the kink in the fused
        # block's precision, which changes the gradients by a whole term: not comparable.
        assume(pre[0].abs().min().item() > 1e-5 * pre[0].abs().max().item())
    eager = None
    if dtype in (torch.float16, torch.bfloat16):
        # The unfused block in the same dtype, same state and input: reduced precision may be
        # as far from float64 as PyTorch's own block is (BatchNorm's backward amplifies the
        # rounding of a channel's few values). Two blocks that round in different places
        # draw different errors of that size, so a few times eager's error is allowed.
        eager = reference.SpatioTemporalConv(case["cin"], case["cout"], case["kernel"], case["stride"],
                                             case["padding"], bias=case["bias"], mid_channels=case["mid"])
        eager = eager.to(device=device, dtype=dtype)
        eager.load_state_dict(fused.state_dict())
        eager = _forward_backward(eager, fx.detach().clone().requires_grad_(), train, case["seed"], rounding)
    got = _forward_backward(fused, fx, train, case["seed"], rounding)
    out = got["output"]
    assert out.dtype == dtype and out.device.type == device
    if case["channels_last"] and not fx.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    floors = {}
    if train:
        # Training-mode BatchNorm removes any per-channel constant and scale of y: the
        # spatial bias gradient, and the spatial weight gradient when each mid channel has a
        # single weight that ever meets data, are zero in exact arithmetic. Both sides are then
        # rounding noise of terms that cancel, sum(grad_y) = scale * grad_beta with
        # scale <= max|gamma| / sqrt(eps); measure against that size.
        noise = want["grad bn.bias"].norm().item() * ref.bn.weight.abs().max().item() / ref.bn.eps ** 0.5
        if case["bias"]:
            floors["grad spatial_conv.bias"] = noise
        if case["cin"] * _taps_touching_data(case, 1) * _taps_touching_data(case, 2) == 1:
            floors["grad spatial_conv.weight"] = noise * rx.detach().abs().max().item()
    tol = TOL[dtype] if tol is None else tol
    eager_errors = _errors(eager, want, floors) if eager else {}
    folded = {"grad spatial_conv.weight", "grad bn.weight"}
    for name, err in _errors(got, want, floors).items():
        bound = max(tol, 4 * eager_errors.get(name, 0.0))
        if not train and (tf32 or eager) and name in folded:
            # In eval the block folds BatchNorm's scale into the spatial weight, stored in
            # `dtype`, so these two gradients pass through the folded weight's gradient, rounded
            # to `dtype` (the CPU kernels, float32 inside, give the same errors): a sum over the
            # weights' taps that cancels on these tiny shapes. Eager takes gamma's gradient from
            # float32 sums instead. 6e-2 still catches a wrong term.
            bound = max(bound, 6e-2)
        assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g} (eager in {dtype}: {eager_errors.get(name)})"
    assert fused.bn.num_batches_tracked.item() == ref.bn.num_batches_tracked.item()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(case=block_cases())
def test_matches_reference_cpu(case, dtype, train):
    _run(case, dtype, "cpu", train)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(case=block_cases())
def test_matches_reference_cuda(case, dtype, train):
    """float32 on the direct kernels here (R2P1D_CUDA_KERNELS=direct); the tensor-core
    kernels (bf16, fp16, TF32) have tests/test_cuda_tc.py."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R2P1D_CUDA_KERNELS", "direct")
        _run(case, dtype, "cuda", train)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@given(case=block_cases(min_per_channel=32))
def test_matches_reference_cuda_direct_reduced(case, dtype, train):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R2P1D_CUDA_KERNELS", "direct")
        _run(case, dtype, "cuda", train)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_inference_path_matches(device):
    """Eval without autograd takes the folded one-op path; with autograd, the two-op path.
    Both equal the reference."""
    ref, fused = make_pair(4, 6, 3, (1, 2, 2), 1, device=device, dtype=torch.float64)
    ref.eval(); fused.eval()
    x = torch.randn(2, 4, 5, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x.to(device)), ref(x), 1e-10, "no-grad eval")
    with torch.inference_mode():
        assert_close(fused(x.to(device)), ref(x), 1e-10, "inference-mode eval")
    assert_close(fused(x.to(device)), ref(x), 1e-10, "eval with autograd")


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_running_stats_over_steps(momentum):
    ref, fused = make_pair(3, 4, 3, 1, 1, dtype=torch.float64)
    ref.bn.momentum = fused.bn.momentum = momentum
    for _ in range(3):
        x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
        ref(x); fused(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(fused.bn, name), getattr(ref.bn, name), rtol=1e-12, atol=1e-12), name


def test_track_running_stats_false_uses_batch_stats_in_eval():
    ref = reference.SpatioTemporalConv(3, 4, 3, padding=1).double()
    ref.bn = torch.nn.BatchNorm3d(ref.mid_channels, track_running_stats=False).double()
    fused = r2p1d_ext.fuse(ref).eval()
    ref.eval()
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    assert_close(fused(x), ref(x), 1e-10, "batch statistics in eval")


def test_drop_in_for_conv3d_shapes_and_arguments():
    x = torch.randn(2, 3, 6, 10, 11)
    for args, kwargs in [((3, 8, 3), {}), ((3, 8, (3, 5, 1), (1, 2, 1), (1, 2, 0)), {}),
                         ((3, 8, 3), {"padding": "same"}), ((3, 8, 3), {"padding": "valid"}),
                         ((3, 8, 3, 2, 1), {"bias": False})]:
        conv = torch.nn.Conv3d(*args, **kwargs)
        block = r2p1d_ext.SpatioTemporalConv(*args, **kwargs)
        assert block(x).shape == conv(x).shape, (args, kwargs)
    unbatched = r2p1d_ext.SpatioTemporalConv(3, 8, 3, padding=1).eval()
    with torch.no_grad():
        assert torch.allclose(unbatched(x[0]), unbatched(x[:1])[0], atol=1e-6)


def test_mid_channels_default_is_parameter_matching():
    block = r2p1d_ext.SpatioTemporalConv(64, 64, 3, bias=False)
    assert block.mid_channels == 144  # the paper's R(2+1)D-18 conv2_x count
    conv = torch.nn.Conv3d(64, 64, 3, bias=False)
    n_block = block.spatial_conv.weight.numel() + block.temporal_conv.weight.numel()
    assert abs(n_block - conv.weight.numel()) / conv.weight.numel() < 0.01
    assert r2p1d_ext.SpatioTemporalConv(3, 64, (3, 7, 7), mid_channels=45).mid_channels == 45


def test_state_dict_loads_both_ways():
    ref = reference.SpatioTemporalConv(3, 5, 3, padding=1)
    fused = r2p1d_ext.SpatioTemporalConv(3, 5, 3, padding=1)
    assert set(ref.state_dict()) == set(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    ref.load_state_dict(fused.state_dict())
    assert set(ref.state_dict()) >= {"spatial_conv.weight", "spatial_conv.bias", "bn.weight",
                                     "bn.bias", "bn.running_mean", "bn.running_var",
                                     "bn.num_batches_tracked", "temporal_conv.weight",
                                     "temporal_conv.bias"}


@pytest.mark.parametrize("device", DEVICES)
def test_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    ref, fused = make_pair(4, 8, 3, 1, 1, device=device)
    fx, rx = random_input((2, 4, 4, 8, 8), torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        out = fused(fx)
    assert out.dtype == dtype
    assert_close(out, ref(rx), 3e-2, "autocast output")
    out.float().sum().backward()
    assert fused.spatial_conv.weight.grad.dtype == torch.float32


def _compile_case(backend):
    ref, fused = make_pair(3, 5, 3, (1, 2, 2), 1, dtype=torch.float32)
    eager = copy.deepcopy(fused)
    compiled = torch.compile(fused, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 4, 9, 9)
    for train in (True, False):
        eager.train(train); fused.train(train)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_e, out_c = eager(xe), compiled(xc)
        assert_close(out_c, out_e, 1e-5, f"compiled output (train={train})")
        out_e.square().sum().backward(); out_c.square().sum().backward()
        assert_close(xc.grad, xe.grad, 1e-5, "compiled input grad")
        for (name, pe), (_, pc) in zip(eager.named_parameters(), fused.named_parameters()):
            assert_close(pc.grad, pe.grad, 1e-4, f"compiled {name} grad")
        assert_close(fused.bn.running_mean, eager.bn.running_mean, 1e-6, "compiled running_mean")
    with torch.no_grad():
        assert_close(compiled(x), eager(x), 1e-5, "compiled no-grad eval")


def test_torch_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    _compile_case("aot_eager")


def test_torch_compile_fullgraph_inductor():
    torch._dynamo.reset()
    _compile_case("inductor")


@pytest.mark.parametrize("path", [p for p in CPU_BF16_PATHS if p.values[0] != "float32"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@settings(max_examples=12)
@given(case=block_cases(min_per_channel=32))
def test_matches_reference_cpu_bf16(case, train, path):
    """bfloat16 on each CPU bfloat16 path against the float64 reference that rounds where
    they do (_reference_rounding), with the tolerance of the CUDA bfloat16 tests (TOL) and
    eager bfloat16's own error. The float32 fallback keeps z in float32, another rounding
    model: tests/test_cpu_bf16.py checks it against the unrounded reference."""
    with cpu_kernels(path):
        _run(case, torch.bfloat16, "cpu", train)
