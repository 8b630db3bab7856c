"""Deployment: unfuse() back to plain PyTorch (torchvision's layout and state_dict names for a
fused torchvision model), and torch.onnx.export of fused models to standard ONNX, run by
ONNX Runtime (when onnxruntime and onnxscript are installed)."""
import warnings

import pytest
import torch
from torch import nn

from r2p1d_ext import SpatioTemporalConv, fuse, models, reference, unfuse

torchvision = pytest.importorskip("torchvision")


def _randomise_bn(model, seed=0):
    """Running statistics and affine parameters away from their defaults, so that folding
    them and keeping them apart differ visibly."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _tv18(classes=7):
    torch.manual_seed(0)
    return _randomise_bn(torchvision.models.video.r2plus1d_18(num_classes=classes))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _fused_blocks(model):
    return sum(isinstance(m, SpatioTemporalConv) for m in model.modules())


# ------------------------------------------------------------------ unfuse
def test_unfuse_gives_torchvision_its_layout_back():
    tv = _tv18()
    fused = fuse(tv)
    assert _fused_blocks(fused) == 17  # 16 Conv2Plus1D + the stem
    plain = unfuse(fused)
    assert _fused_blocks(plain) == 0 and _fused_blocks(fused) == 17  # a copy by default
    assert list(plain.state_dict()) == list(tv.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), tv.state_dict().values()))
    assert [type(m) for m in plain.stem] == [type(m) for m in tv.stem]
    assert plain.stem[2].inplace and plain.layer1[0].conv1[0][2].inplace  # torchvision's ReLU(inplace=True)
    x = torch.randn(2, 3, 4, 32, 32)
    for train in (False, True):
        tv.train(train), plain.train(train)
        out_tv, out_plain = tv(x), plain(x)
        assert torch.equal(out_tv, out_plain), train  # the same modules, the same ops
    out_tv.square().sum().backward()
    out_plain.square().sum().backward()
    assert torch.equal(tv.layer2[0].conv1[0][3].weight.grad, plain.layer2[0].conv1[0][3].weight.grad)
    assert torch.equal(tv.layer4[1].conv2[1].running_mean, plain.layer4[1].conv2[1].running_mean)


def test_unfuse_builds_reference_blocks_for_blocks_built_fused():
    torch.manual_seed(0)
    model = _randomise_bn(models.r2plus1d_10(num_classes=5)).eval()
    plain = unfuse(model)
    assert _fused_blocks(plain) == 0
    assert isinstance(plain.stem[0], reference.SpatioTemporalConv)
    assert isinstance(plain.layer3[0].conv1[0], reference.SpatioTemporalConv)
    assert list(plain.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert _rel(plain(x), model(x)) < 1e-5
    block = SpatioTemporalConv(4, 6, (3, 5, 5), stride=(2, 1, 2), padding=(1, 2, 0), bias=True)
    ref = unfuse(block)
    assert type(ref) is reference.SpatioTemporalConv and ref.training
    assert (ref.kernel_size, ref.stride, ref.padding, ref.mid_channels) == \
           (block.kernel_size, block.stride, block.padding, block.mid_channels)
    assert list(ref.state_dict()) == list(block.state_dict())
    assert ref.spatial_conv.weight.device.type == "cpu"  # the block's own modules, not the meta shell's


def test_unfuse_in_place_shares_parameters_and_round_trips():
    tv = _tv18()
    fused = fuse(tv, inplace=True)
    plain = unfuse(fused, inplace=True)
    assert plain is fused and plain.layer1[0].conv1[0][0].weight is tv.layer1[0].conv1[0][0].weight
    again = fuse(plain)
    assert _fused_blocks(again) == 17 and list(unfuse(again).state_dict()) == list(plain.state_dict())


def test_unfused_model_runs_without_the_kernels_in_torchscript_and_export():
    plain = unfuse(fuse(_tv18())).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(plain)
    with torch.no_grad():
        assert torch.equal(scripted(x), plain(x))
    graph = str(torch.export.export(plain, (x,)).graph)
    assert "r2p1d" not in graph and "conv3d" in graph


# ------------------------------------------------------------------ ONNX
def _onnx_run(model, x, **export_kwargs):
    """Export with the dynamo exporter, check the graph holds standard ONNX operators only,
    and run it with ONNX Runtime on x."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, **export_kwargs)
    nodes = program.model_proto.graph.node
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}, {n.domain for n in nodes}
    assert "Conv" in {n.op_type for n in nodes}
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(inp):
        return torch.from_numpy(session.run(None, {name: inp.numpy()})[0])
    return run, {n.op_type for n in nodes}


def test_onnx_export_of_a_fused_torchvision_model_runs_in_onnx_runtime():
    tv = _tv18().eval()
    fused = fuse(tv)
    x = torch.randn(2, 3, 8, 48, 48)
    run, _ = _onnx_run(fused, x)
    with torch.no_grad():
        assert _rel(run(x), tv(x)) < 1e-5 and _rel(run(x), fused(x)) < 1e-5


def test_onnx_export_with_a_dynamic_batch():
    torch.manual_seed(0)
    model = _randomise_bn(models.r2plus1d_10(num_classes=5)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    run, _ = _onnx_run(model, torch.randn(2, 3, 4, 32, 32), dynamic_shapes={"x": {0: batch}})
    for n in (1, 3):
        x = torch.randn(n, 3, 4, 32, 32)
        with torch.no_grad():
            out = model(x)
        assert run(x).shape == (n, 5) and _rel(run(x), out) < 1e-5


@pytest.mark.parametrize("train", [False, True])
def test_onnx_export_of_one_block(train):
    torch.manual_seed(0)
    block = _randomise_bn(SpatioTemporalConv(3, 8, 3, stride=(1, 2, 2), padding=1)).train(train)
    x = torch.randn(2, 3, 4, 17, 17)
    before = block.bn.running_mean.clone()
    run, ops = _onnx_run(block, x)
    assert torch.equal(block.bn.running_mean, before)  # exporting updates no statistics
    # Eval: BatchNorm folded into the first Conv, as the inference op computes it.
    assert ("BatchNormalization" in ops) == train, ops
    with torch.no_grad():
        assert _rel(run(x), block(x)) < 1e-5
