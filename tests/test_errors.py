"""Bad input gets a clear exception naming what was expected and what was given."""
import pytest
import torch

import r2p1d_ext
from r2p1d_ext import ops

from conftest import HAS_CUDA


def _block(**kw):
    return r2p1d_ext.SpatioTemporalConv(3, 4, 3, padding=kw.pop("padding", 1), **kw)


@pytest.mark.parametrize("shape,match", [
    # 4-D is one unbatched (C, T, H, W) clip: a batch without T says so, with the shape it got
    ((2, 3, 4, 8), r"a 4-D input is read as one unbatched \(C, T, H, W\) clip, expected C=3, got shape "
                   r"\(2, 3, 4, 8\); pass a batch as \(N, 3, T, H, W\)"),
    ((1, 3, 64, 64), r"unbatched \(C, T, H, W\) clip, expected C=3, got shape \(1, 3, 64, 64\)"),
    ((3, 4, 8), r"5-D \(N, C, T, H, W\) or 4-D .*got 3-D"),
    ((2, 3, 4, 8, 8, 1), r"got 6-D"),
])
def test_wrong_rank(shape, match):
    with pytest.raises(ValueError, match=match):
        _block()(torch.randn(shape))


def test_channel_mismatch():
    with pytest.raises(ValueError, match=r"expected input with 3 channels, got 5"):
        _block()(torch.randn(2, 5, 4, 8, 8))


def test_input_smaller_than_kernel():
    with pytest.raises(ValueError, match=r"input size H=2 \(padded 2\) is smaller than the kernel size 3"):
        _block(padding=0)(torch.randn(2, 3, 4, 2, 8))


def test_dtype_mismatch():
    with pytest.raises(ValueError, match=r"expected input of dtype torch.float32.*got torch.float64"):
        _block()(torch.randn(2, 3, 4, 8, 8, dtype=torch.float64))


def test_integer_input():
    with pytest.raises(ValueError, match=r"dtype"):
        _block()(torch.ones(2, 3, 4, 8, 8, dtype=torch.int64))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_device_mismatch():
    with pytest.raises(ValueError, match=r"expected input on cpu.*got cuda"):
        _block()(torch.randn(2, 3, 4, 8, 8, device="cuda"))


def test_empty_input():
    """A batch of 0 is fine (as for nn.Conv3d: tests/test_robustness.py); an empty time or
    space dimension is not."""
    with pytest.raises(ValueError, match=r"non-empty"):
        r2p1d_ext.SpatioTemporalConv(3, 4, (1, 3, 3), padding=1)(torch.randn(2, 3, 0, 8, 8))


def test_one_value_per_channel_in_training():
    block = r2p1d_ext.SpatioTemporalConv(3, 4, (1, 3, 3))
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        block(torch.randn(1, 3, 1, 3, 3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=1, out_channels=1, kernel_size=1), r"gives 0 mid channels.*pass mid_channels"),
    (dict(in_channels=3, out_channels=4, kernel_size=(3, 3)), r"kernel_size to be an int or a triple"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), r"kernel size to be >= 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=0), r"stride to be >= 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), r"non-negative padding"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="same", stride=2), r"'same' needs stride 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=2, padding="same"), r"odd kernel sizes"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), r"in_channels to be a positive int"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, mid_channels=0), r"mid_channels to be a positive int"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        r2p1d_ext.SpatioTemporalConv(**kwargs)


# ------------------------------------------------------------------ the ops' own checks
def test_op_checks_name_expected_and_given():
    x = torch.randn(2, 3, 4, 8, 8)
    w = torch.randn(5, 3, 1, 3, 3)
    with pytest.raises(ValueError, match=r"expected input with 3 channels \(the spatial weight's\), but got 2"):
        ops.spatial_conv_stats(torch.randn(2, 2, 4, 8, 8), w, None, [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"spatial weight of dtype Float .*but got Double"):
        ops.spatial_conv_stats(x, w.double(), None, [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"spatial weight of shape \(M, C, 1, kh, kw\)"):
        ops.spatial_conv_stats(x, torch.randn(5, 3, 3, 3, 3), None, [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"spatial bias of shape \[5\], but got \[4\]"):
        ops.spatial_conv_stats(x, w, torch.randn(4), [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"input height is 2 .* smaller than the kernel size 3"):
        ops.spatial_conv_stats(torch.randn(2, 3, 4, 2, 8), w, None, [1, 1], [0, 0])
    with pytest.raises(ValueError, match=r"expected stride >= 1"):
        ops.spatial_conv_stats(x, w, None, [0, 1], [1, 1])
    y = torch.randn(2, 5, 4, 8, 8)
    v = torch.ones(5)
    with pytest.raises(ValueError, match=r"expected scale to be a vector of 5 per-channel values, but got shape \[4\]"):
        ops.temporal_conv_bnrelu(y, v, torch.ones(4), v, torch.randn(6, 5, 3, 1, 1), None, 1, 1)
    with pytest.raises(ValueError, match=r"temporal weight of shape \(O, M, kt, 1, 1\)"):
        ops.temporal_conv_bnrelu(y, v, v, v, torch.randn(6, 5, 3, 3, 1), None, 1, 1)
    with pytest.raises(ValueError, match=r"input time is 4 .* smaller than the kernel size 7"):
        ops.temporal_conv_bnrelu(y, v, v, v, torch.randn(6, 5, 7, 1, 1), None, 1, 0)
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        ops.update_running_stats(torch.zeros(5), torch.ones(5), torch.tensor(0), v, v, 1, 0.1)
    with pytest.raises(ValueError, match=r"num_batches_tracked to be a one-element int64 tensor"):
        ops.update_running_stats(torch.zeros(5), torch.ones(5), torch.tensor(0.0), v, v, 4, 0.1)


# ------------------------------------------------------------------ every argument's dtype
def _valid_args(op, dtype, device="cpu"):
    """A valid call of each op for `dtype` inputs (per-channel vectors in float32, as the
    module passes them for reduced precision; float64 for float64)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    vdt = torch.float64 if dtype == torch.float64 else torch.float32
    v = lambda n: torch.rand(n, generator=g).add(0.5).to(vdt).to(device)  # noqa: E731
    x, w, b = r(2, 3, 4, 6, 6), r(8, 3, 1, 3, 3), r(8)
    y, wt, bt = r(2, 8, 4, 6, 6), r(5, 8, 3, 1, 1), r(5)
    if op == "spatial_conv_stats":
        return [x, w, b, [1, 1], [1, 1]]
    if op == "spatial_conv_backward":
        return [r(2, 8, 4, 6, 6), x, w, y, v(8), v(8), v(8), [1, 1], [1, 1], [True] * 3]
    if op == "temporal_conv_bnrelu":
        return [y, v(8), v(8), v(8), wt, bt, 1, 1]
    if op == "temporal_conv_bnrelu_backward":
        return [r(2, 5, 4, 6, 6), y, v(8), v(8), v(8), wt, 1, 1, [True] * 6]
    if op == "fused_eval":
        return [x, w, b, wt, bt, [1, 1, 1], [1, 1, 1], r(2, 5, 4, 6, 6)]
    return [v(8), v(8), torch.tensor(3, device=device), v(8), v(8), 10, 0.1]  # update_running_stats


# (op, argument index, name in the message, what is checked): "dtype" for the tensors that
# must have the input's dtype, "floating" for those (the input, per-channel vectors) that
# must hold floating-point values.
CASES = [
    ("spatial_conv_stats", 0, "input", "floating"), ("spatial_conv_stats", 1, "spatial weight", "dtype"),
    ("spatial_conv_stats", 2, "spatial bias", "dtype"),
    ("spatial_conv_backward", 0, "grad_y", "dtype"), ("spatial_conv_backward", 1, "input", "floating"),
    ("spatial_conv_backward", 2, "spatial weight", "dtype"), ("spatial_conv_backward", 3, "y", "dtype"),
    ("spatial_conv_backward", 4, "mean", "floating"), ("spatial_conv_backward", 5, "grad_mean", "floating"),
    ("spatial_conv_backward", 6, "grad_var", "floating"),
    ("temporal_conv_bnrelu", 0, "intermediate y", "floating"), ("temporal_conv_bnrelu", 1, "mean", "floating"),
    ("temporal_conv_bnrelu", 2, "scale", "floating"), ("temporal_conv_bnrelu", 3, "shift", "floating"),
    ("temporal_conv_bnrelu", 4, "temporal weight", "dtype"), ("temporal_conv_bnrelu", 5, "temporal bias", "dtype"),
    ("temporal_conv_bnrelu_backward", 0, "grad_out", "dtype"),
    ("temporal_conv_bnrelu_backward", 1, "intermediate y", "floating"),
    ("temporal_conv_bnrelu_backward", 2, "mean", "floating"), ("temporal_conv_bnrelu_backward", 3, "scale", "floating"),
    ("temporal_conv_bnrelu_backward", 4, "shift", "floating"),
    ("temporal_conv_bnrelu_backward", 5, "temporal weight", "dtype"),
    ("fused_eval", 0, "input", "floating"), ("fused_eval", 1, "spatial weight", "dtype"),
    ("fused_eval", 2, "spatial bias", "dtype"), ("fused_eval", 3, "temporal weight", "dtype"),
    ("fused_eval", 4, "temporal bias", "dtype"), ("fused_eval", 7, "residual", "dtype"),
    ("update_running_stats", 0, "running_mean", "floating"), ("update_running_stats", 1, "running_var", "dtype"),
    ("update_running_stats", 3, "batch mean", "floating"), ("update_running_stats", 4, "batch var", "floating"),
]
IMPLS = ["cpu", "fake", "emulator",
         pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))]


def _call_with(impl, op, index, wrong):
    """Calls `op` of `impl` with argument `index` replaced by wrong(original)."""
    dtype = torch.bfloat16 if impl == "emulator" else torch.float32
    args = _valid_args(op, dtype, "cuda" if impl == "cuda" else "cpu")
    args[index] = wrong(args[index])
    if impl == "emulator":
        return getattr(torch.ops.r2p1d_tc_emulate, op)(*args)
    if impl == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as mode:
            return getattr(torch.ops.r2p1d, op)(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                   for a in args])
    return getattr(torch.ops.r2p1d, op)(*args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,index,name,wrong", CASES, ids=[f"{o}-{n}-{w}" for o, _, n, w in CASES])
def test_every_tensor_argument_has_its_dtype_checked(impl, op, index, name, wrong):
    """A tensor of another dtype than the input's, or an integer tensor where values are
    expected, is refused before any kernel reads its bytes (a bf16 grad_y with a float32
    input would be read past its end on a GPU)."""
    if impl == "emulator" and op == "update_running_stats":
        pytest.skip("no tensor-core kernel: the emulator has no running-statistics op")
    if wrong == "floating":
        dtype, match = torch.int64, rf"expected {name} to be a floating-point tensor, but got dtype (torch\.)?(int64|Long)"
    else:
        dtype = torch.float64 if impl == "emulator" or op == "update_running_stats" else torch.bfloat16
        given = "(float64|Double)" if dtype == torch.float64 else "(bfloat16|BFloat16)"
        match = rf"expected {name} of dtype .*but got .*{given}"
    with pytest.raises(ValueError, match=match):
        _call_with(impl, op, index, lambda t: t.to(dtype))
