"""What the fused block keeps for backward, and that only our kernels run inside it."""
import re

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import r2p1d_ext
from r2p1d_ext import reference
from r2p1d_ext.measure import saved_activation_bytes

from conftest import DEVICES


# R(2+1)D-18 block shapes at reduced batch/size: (in, out, kernel, stride, padding, mid, input)
SHAPES = {
    "stem": (3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), 45, (2, 3, 8, 56, 56)),
    "conv2_x": (64, 64, 3, 1, 1, None, (2, 64, 8, 28, 28)),
    "conv3_x": (128, 128, 3, 1, 1, None, (2, 128, 4, 14, 14)),
}


@pytest.mark.parametrize("name", SHAPES)
def test_saved_for_backward_is_x_y_and_vectors(name):
    cin, cout, k, s, p, mid, shape = SHAPES[name]
    ref = reference.SpatioTemporalConv(cin, cout, k, s, p, mid_channels=mid)
    fused = r2p1d_ext.fuse(ref)
    x = torch.randn(shape, requires_grad=True)
    # Parameters excluded: both blocks save them and they cost no extra memory.
    eager, _ = saved_activation_bytes(lambda: ref(x), ref.parameters())
    ours, out = saved_activation_bytes(lambda: fused(x), fused.parameters())
    ratio = ours / eager
    # x and y (the spatial output) plus per-channel vectors; the eager block also keeps
    # BatchNorm's output after ReLU (z) for the temporal conv.
    assert ratio <= 0.6, f"{name}: fused saves {ours} bytes, eager {eager} (ratio {ratio:.2f})"
    y_bytes = x.shape[0] * fused.mid_channels * x.shape[2] * out.shape[3] * out.shape[4] * 4
    assert ours <= x.numel() * 4 + y_bytes + 16 * fused.mid_channels * 8


BANNED = re.compile(r"conv|cudnn|batch_norm|mkldnn|miopen|im2col|col2im", re.IGNORECASE)


def _op_names(fn, device):
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("device", DEVICES)
def test_no_library_convolution_or_batchnorm_runs(device):
    fused = r2p1d_ext.SpatioTemporalConv(8, 16, 3, (1, 2, 2), 1).to(device)
    x = torch.randn(2, 8, 4, 12, 12, device=device, requires_grad=True)

    def train_step():
        fused.train()
        fused(x).square().sum().backward()

    def inference():
        fused.eval()
        with torch.no_grad():
            fused(x)

    for fn, expected in ((train_step, {"r2p1d::spatial_conv_stats", "r2p1d::temporal_conv_bnrelu",
                                        "r2p1d::spatial_conv_backward",
                                        "r2p1d::temporal_conv_bnrelu_backward",
                                        "r2p1d::update_running_stats"}),
                         (inference, {"r2p1d::fused_eval"})):
        names = _op_names(fn, device)
        assert expected <= names, f"our ops did not run: {expected - names}"
        library = sorted(n for n in names if BANNED.search(n) and not n.startswith("r2p1d::")
                         and not re.search(r"r2p1d|spatial_|temporal_", n))
        assert not library, f"library convolution / batch norm ran inside the fused block: {library}"


def test_profiler_check_can_fail():
    """The reference block trips the same check (so the check above is not vacuous)."""
    ref = reference.SpatioTemporalConv(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 4, 12, 12)
    names = _op_names(lambda: ref(x), "cpu")
    assert any(BANNED.search(n) for n in names)
