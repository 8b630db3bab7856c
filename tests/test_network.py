"""The R(2+1)D networks: shapes, parameter counts, torchvision state_dicts, fused vs unfused."""
import pytest
import torch

import r2p1d_ext
from r2p1d_ext import models, reference

from conftest import assert_close, randomize_bn


def _randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            randomize_bn(m, gen)
    return model


def test_original_layout_shapes_and_fused_vs_reference():
    torch.manual_seed(0)
    ref = _randomize(models.R2Plus1DClassifier(5, [1, 1, 1, 1], conv=reference.SpatioTemporalConv)).double()
    fused = models.R2Plus1DClassifier(5, [1, 1, 1, 1]).double()
    fused.load_state_dict(ref.state_dict())
    ref.load_state_dict(fused.state_dict())  # both ways
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    ref.eval(); fused.eval()
    with torch.no_grad():
        out = fused(x)
        assert out.shape == (2, 5)
        assert_close(out, ref(x), 1e-10, "logits")
        assert models.R2Plus1DNet([1, 1, 1, 1])(x.float()).shape == (2, 512)


def test_original_layout_is_made_of_fused_blocks():
    net = models.R2Plus1DNet([2, 2, 2, 2])
    blocks = [m for m in net.modules() if isinstance(m, r2p1d_ext.SpatioTemporalConv)]
    assert len(blocks) == 1 + 2 * 8 + 3  # stem, two per block, three downsampling convs
    assert net.conv1.kernel_size == (3, 7, 7) and net.conv1.stride == (1, 2, 2)


def test_bad_layer_sizes():
    with pytest.raises(ValueError, match="expected layer_sizes to be 4 positive ints"):
        models.R2Plus1DNet([2, 2, 2])


tv_video = pytest.importorskip("torchvision.models.video", reason="torchvision is a test dependency")


@pytest.mark.parametrize("name,layers", [("r2plus1d_18", None), ("r2plus1d_10", [1, 1, 1, 1]),
                                         ("r2plus1d_34", [3, 4, 6, 3])])
def test_torchvision_layout_loads_torchvision_weights(name, layers):
    torch.manual_seed(0)
    if name == "r2plus1d_18":
        tv = tv_video.r2plus1d_18(num_classes=7)
    else:
        tv = tv_video.VideoResNet(tv_video.resnet.BasicBlock, [tv_video.resnet.Conv2Plus1D] * 4,
                                  layers, tv_video.resnet.R2Plus1dStem, num_classes=7)
    _randomize(tv)
    ours = getattr(models, name)(num_classes=7)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    assert n_params(ours) == n_params(tv)
    models.load_torchvision_state_dict(ours, tv.state_dict())  # strict: every key maps
    tv.double().eval(); ours.double().eval()
    x = torch.randn(1, 3, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close(ours(x), tv(x), 1e-10, f"{name} logits")


def test_networks_take_channels_last_and_autocast():
    torch.manual_seed(0)
    model = models.r2plus1d_10(num_classes=4).train()
    x = torch.randn(2, 3, 4, 32, 32).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 4) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
