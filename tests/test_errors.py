"""Bad input gets a clear exception naming what was expected and what was given."""
import pytest
import torch

import r2p1d_ext
from r2p1d_ext import ops

from conftest import HAS_CUDA


def _block(**kw):
    return r2p1d_ext.SpatioTemporalConv(3, 4, 3, padding=kw.pop("padding", 1), **kw)


@pytest.mark.parametrize("shape,match", [
    ((2, 3, 4, 8), r"5-D \(N, C, T, H, W\).*4-D|expected input with 3 channels"),
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
