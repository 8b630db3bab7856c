"""fuse(): every unfused (2+1)D block replaced, weights and BatchNorm state carried over,
outputs unchanged: the reference module, nested models, torchvision's R(2+1)D-18."""
import copy

import pytest
import torch
from torch import nn

import r2p1d_ext
from r2p1d_ext import reference

from conftest import assert_close, randomize_all_bn

tv_video = pytest.importorskip("torchvision.models.video", reason="torchvision is a test dependency")


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_fuse_reference_block_and_nested_model():
    model = nn.Sequential(
        reference.SpatioTemporalConv(3, 8, 3, padding=1),
        nn.Sequential(reference.SpatioTemporalConv(8, 8, (3, 5, 5), (2, 1, 1), (1, 2, 2), bias=False)),
        nn.AdaptiveAvgPool3d(1),
    ).double()
    randomize_all_bn(model)
    fused = r2p1d_ext.fuse(model)
    assert _count(fused, r2p1d_ext.SpatioTemporalConv) == 2
    assert _count(fused, reference.SpatioTemporalConv) == 0
    assert _count(model, reference.SpatioTemporalConv) == 2, "inplace=False must not touch the input"
    x = torch.randn(2, 3, 5, 9, 9, dtype=torch.float64)
    model.eval(); fused.eval()
    with torch.no_grad():
        assert_close(fused(x), model(x), 1e-10, "eval output")
    model.train(); fused.train()
    assert_close(fused(x), model(x), 1e-10, "train output")


def test_fuse_top_level_block_and_inplace():
    block = reference.SpatioTemporalConv(3, 4, 3, padding=1)
    fused = r2p1d_ext.fuse(block, inplace=True)
    assert isinstance(fused, r2p1d_ext.SpatioTemporalConv)
    assert fused.spatial_conv is block.spatial_conv  # the same Parameters, not copies


def test_fuse_leaves_other_sequences_alone():
    seq = nn.Sequential(nn.Conv3d(3, 4, (1, 3, 3)), nn.BatchNorm3d(4), nn.ReLU(),
                        nn.Conv3d(4, 5, (3, 3, 1)))  # temporal conv is not (kt,1,1)
    assert r2p1d_ext.fuse(seq, inplace=True) is seq
    seq = nn.Sequential(nn.Conv3d(3, 4, (1, 3, 3), dilation=2), nn.BatchNorm3d(4), nn.ReLU(),
                        nn.Conv3d(4, 5, (3, 1, 1)))  # dilated
    assert r2p1d_ext.fuse(seq, inplace=True) is seq


def test_fuse_keeps_mixed_bias():
    seq = nn.Sequential(nn.Conv3d(3, 6, (1, 3, 3), padding=(0, 1, 1), bias=True), nn.BatchNorm3d(6),
                        nn.ReLU(), nn.Conv3d(6, 4, (3, 1, 1), padding=(1, 0, 0), bias=False),
                        nn.ReLU()).double()
    randomize_all_bn(seq)
    fused = r2p1d_ext.fuse(seq)
    assert isinstance(fused[0], r2p1d_ext.SpatioTemporalConv) and len(fused) == 2
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    seq.eval(); fused.eval()
    with torch.no_grad():
        assert_close(fused(x), seq(x), 1e-10, "eval output")


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    return randomize_all_bn(tv_video.r2plus1d_18(num_classes=10))


def test_fuse_torchvision_r2plus1d_18_structure(tv_model):
    fused = r2p1d_ext.fuse(tv_model)
    assert _count(fused, r2p1d_ext.SpatioTemporalConv) == 17  # the stem + 8 blocks x 2
    assert _count(fused, tv_video.resnet.Conv2Plus1D) == 0
    assert fused.stem[0].mid_channels == 45
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    assert n_params(fused) == n_params(tv_model)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fuse_torchvision_r2plus1d_18_eval_outputs(tv_model, dtype, tol):
    model = copy.deepcopy(tv_model).to(dtype).eval()
    fused = r2p1d_ext.fuse(model).eval()
    x = torch.randn(2, 3, 4, 32, 32, dtype=dtype)
    with torch.no_grad():
        want = model.double()(x.double())
        got = fused(x)
    assert_close(got, want, tol, "logits")


def test_fuse_torchvision_r2plus1d_18_training_step(tv_model):
    model = copy.deepcopy(tv_model).double().train()
    fused = r2p1d_ext.fuse(model).train()
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    out_ref, out = model(x), fused(x)
    assert_close(out, out_ref, 1e-10, "train logits")
    g = torch.randn_like(out)
    grads_ref = torch.autograd.grad(out_ref, list(model.parameters()), g)
    grads = torch.autograd.grad(out, list(fused.parameters()), g)
    names = [n for n, _ in model.named_parameters()]
    total = torch.cat([t.reshape(-1) for t in grads_ref]).norm()
    for name, a, b in zip(names, grads, grads_ref):
        if b.norm() > 1e-6 * total:
            assert_close(a, b, 1e-8, f"grad {name}")
    bufs = [(n, b) for n, b in model.named_buffers()]
    for (n, b), (_, fb) in zip(bufs, fused.named_buffers()):
        assert torch.allclose(fb.double(), b.double(), rtol=1e-10, atol=1e-12), n
