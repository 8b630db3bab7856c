"""Kernel choice of the CUDA tensor-core path (csrc/tc/plan.h), checked on the CPU for
every R(2+1)D-18/34 layer shape and the odd ones: tile shape, grid, K splits, the padded
share of the MMA work, and how wide each operand's global accesses are. No GPU needed: the
plan is plain host C++."""
from collections import namedtuple

import pytest
import torch

import r2p1d_ext  # noqa: F401  (loads the library)

H100_SMS = 132
BK = {torch.bfloat16: 32, torch.float16: 32, torch.float32: 16}
MMA_K = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 8}
MAX_WORKSPACE = 64 << 20
# The tile lists of csrc/tc/plan.h: (BM, BN) by index, for the GEMMs whose rows are pixels
# and for the weight gradients.
PIXEL_TILES = [(128, 128), (64, 64), (128, 96), (128, 144), (128, 48)]
WGRAD_TILES = [(128, 128), (64, 64), (48, 128), (96, 128), (48, 160), (64, 144)]

Plan = namedtuple("Plan", "tile grid_m grid_n splits split_depth rows cols depth a_width b_width a_async b_async "
                          "bm bn padded_ppm out_width")


def PLAN(*args, **kwargs):
    return Plan(*torch.ops.r2p1d_tc_emulate.plan(*args, **kwargs))


def _tv_mid(cin, cout):
    return (cin * cout * 27) // (cin * 9 + 3 * cout)


def r2plus1d_layers(layers=(2, 2, 2, 2), batch=32, frames=16, size=112):
    """Every (2+1)D conv of torchvision's r2plus1d_18/34 (their first block per stage halves
    T, H, W): name -> (N, C, T, H, W, M, k, stride, padding, O)."""
    out = {"stem": (batch, 3, frames, size, size, 45, (3, 7, 7), (1, 2, 2), (1, 3, 3), 64)}
    t, hw, cin = frames, size // 2, 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            stride = 2 if stage > 1 and b == 0 else 1
            mid = _tv_mid(cin, planes)  # both convs of a block use the block's first midplanes
            out[f"layer{stage}.{b}.conv1"] = (batch, cin, t, hw, hw, mid, (3, 3, 3), (stride,) * 3, (1, 1, 1), planes)
            t, hw = (t - 1) // stride + 1, (hw - 1) // stride + 1
            out[f"layer{stage}.{b}.conv2"] = (batch, planes, t, hw, hw, mid, (3, 3, 3), (1, 1, 1), (1, 1, 1), planes)
            cin = planes
    return out


LAYERS = {**r2plus1d_layers(), **{f"r34.{k}": v for k, v in r2plus1d_layers((3, 4, 6, 3)).items()},
          # the odd ones: batch 1 and T=1 (few tiles), one-frame clips, tiny layers
          "conv5-batch1": (1, 512, 2, 7, 7, 1152, (3, 3, 3), (1, 1, 1), (1, 1, 1), 512),
          "T1": (2, 64, 1, 8, 8, 144, (3, 3, 3), (1, 1, 1), (1, 1, 1), 64),
          "tiny": (1, 3, 2, 5, 5, 5, (3, 3, 3), (1, 2, 2), (1, 1, 1), 7)}


def _gemm_sizes(layer):
    N, C, T, H, W, M, k, s, p, O = layer
    Ho, Wo = (H + 2 * p[1] - k[1]) // s[1] + 1, (W + 2 * p[2] - k[2]) // s[2] + 1
    spatial = [N, C, T, H, W, M, k[1], k[2], s[1], s[2], p[1], p[2]]
    temporal = [N, M, T, Ho, Wo, O, k[0], s[0], p[0]]
    return spatial, temporal


def _plans(layer, dtype, sms=H100_SMS):
    spatial, temporal = _gemm_sizes(layer)
    out = {}
    for gemm in ("spatial_fprop", "spatial_dgrad", "spatial_wgrad"):
        out[gemm] = PLAN(gemm, spatial, dtype, sms)
    for gemm in ("temporal_fprop", "temporal_dgrad", "temporal_wgrad"):
        out[gemm] = PLAN(gemm, temporal, dtype, sms)
    return out


def _padded(p, dtype):
    """The padded share of a plan's MMA work, recomputed from its grid and split."""
    k_run = 0
    for k0 in range(0, p.depth, p.split_depth):
        k_run += -(-min(p.split_depth, p.depth - k0) // MMA_K[dtype]) * MMA_K[dtype]
    return 1 - p.rows * p.cols * p.depth / (p.grid_m * p.bm * p.grid_n * p.bn * k_run)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
@pytest.mark.parametrize("name", LAYERS)
def test_plan_covers_the_problem(name, dtype):
    """Every GEMM of every layer: the tile is one of its list's, the grid covers rows and
    columns, the K splits cover K with none empty, each split is whole K tiles, the split
    workspace is bounded, the grid fits CUDA's limits, and the padded share is the one the
    grid and split give."""
    for gemm, p in _plans(LAYERS[name], dtype).items():
        tiles = WGRAD_TILES if gemm.endswith("wgrad") else PIXEL_TILES
        assert (p.bm, p.bn) == tiles[p.tile], gemm
        assert p.grid_m * p.bm >= p.rows > (p.grid_m - 1) * p.bm, gemm
        assert p.grid_n * p.bn >= p.cols > (p.grid_n - 1) * p.bn, gemm
        assert p.split_depth % BK[dtype] == 0 and p.splits * p.split_depth >= p.depth > (p.splits - 1) * p.split_depth
        assert p.grid_n <= 65535 and p.splits <= 65535 and p.grid_m < 2**31, gemm
        ws_ld = -(-p.cols // 8) * 8
        assert p.splits == 1 or p.splits * p.rows * ws_ld * 4 <= MAX_WORKSPACE, gemm
        assert abs(p.padded_ppm / 1e6 - _padded(p, dtype)) < 2e-6, gemm


def _training_gemms(dtype):
    """(layer, GEMM, plan) of every GEMM R(2+1)D-18 runs in training at batch 32, 16x112x112
    clips, except the stem's input gradient (the clips need none)."""
    for name, layer in r2plus1d_layers().items():
        for gemm, p in _plans(layer, dtype).items():
            if not (name == "stem" and gemm == "spatial_dgrad"):
                yield name, gemm, p


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
def test_padded_work_is_at_most_15_percent(dtype):
    """The tile shapes fit R(2+1)D-18's channel counts (45, 144, 230, 460, 921 mid channels):
    no GEMM of a training step pads more than 15% of its MMA work."""
    worst = max(_training_gemms(dtype), key=lambda t: t[2].padded_ppm)
    assert worst[2].padded_ppm <= 150000, worst


def test_r2plus1d_18_choices():
    """The choices at batch 32, 16x112x112 clips on an H100 (132 SMs), bf16."""
    layers = r2plus1d_layers()
    conv2 = _plans(layers["layer1.0.conv1"], torch.bfloat16)
    # 144 mid channels: one 128x144 tile across them; 64 and 144 channels move in 16-byte
    # pieces, by cp.async where no prologue applies (x and the weight).
    f = conv2["spatial_fprop"]
    assert (f.bm, f.bn, f.grid_n, f.padded_ppm) == (128, 144, 1, 0)
    assert (f.a_width, f.b_width, f.a_async, f.b_async, f.out_width) == (16, 16, 1, 1, 16)
    t = conv2["temporal_fprop"]
    assert (t.a_width, t.a_async) == (16, 0)  # BatchNorm+ReLU of y: through registers
    # Weight gradients: K splits make >= 2 waves.
    w = conv2["spatial_wgrad"]
    assert w.grid_m * w.grid_n * w.splits >= 2 * H100_SMS and w.splits > 1
    # The stem: 3 input channels (2-byte pieces) and 45 mid channels in a 48-wide tile.
    stem = _plans(layers["stem"], torch.bfloat16)
    assert stem["spatial_fprop"].a_width == 2 and stem["spatial_fprop"].bn == 48
    assert stem["temporal_fprop"].a_width == 2  # y has 45 channels
    # 230, 460 and 921 mid channels (first block of stages 2-4): the widest pieces their
    # rows allow (460 bytes, 920 bytes, 1842 bytes a pixel).
    for name, width in (("layer2.0.conv1", 4), ("layer3.0.conv1", 8), ("layer4.0.conv1", 2)):
        p = _plans(layers[name], torch.bfloat16)
        assert p["temporal_fprop"].a_width == width and p["spatial_wgrad"].a_width == width, name
        assert p["spatial_fprop"].a_width == 16, name  # C = 64/128/256
    # conv5_x at batch 1 (98 output pixels): under one wave, the forwards split K.
    small = _plans(LAYERS["conv5-batch1"], torch.bfloat16)
    for gemm in ("spatial_fprop", "temporal_fprop", "spatial_dgrad", "temporal_dgrad"):
        p = small[gemm]
        assert p.splits > 1 and p.grid_m * p.grid_n < H100_SMS * 4, gemm


def test_tf32_widths():
    """float32 elements are 4 bytes: 460 mid channels move in 16-byte pieces under TF32
    (8-byte ones in bf16), and TF32 operands never go by cp.async (they are rounded to TF32
    on their way through registers)."""
    layer = r2plus1d_layers()["layer3.0.conv1"]
    assert _plans(layer, torch.float32)["temporal_fprop"].a_width == 16
    assert _plans(layer, torch.bfloat16)["temporal_fprop"].a_width == 8
    for gemm, p in _plans(r2plus1d_layers()["layer1.0.conv1"], torch.float32).items():
        assert not p.a_async and not p.b_async, gemm


def test_the_bias_column():
    """With the bias gradient the weight gradients' GEMM has one more column (of ones)."""
    spatial, temporal = _gemm_sizes(r2plus1d_layers()["layer1.0.conv1"])
    assert PLAN("spatial_wgrad", spatial, torch.bfloat16, bias=True).cols == 9 * 64 + 1
    assert PLAN("spatial_wgrad", spatial, torch.bfloat16).cols == 9 * 64
    assert PLAN("temporal_wgrad", temporal, torch.bfloat16, bias=True).cols == 3 * 144 + 1


@pytest.mark.parametrize("sms", [1, 8, 132, 10000])
def test_plan_for_any_gpu_size(sms):
    """The plan adapts to the SM count (more SMs, more splits) and stays valid."""
    layer = r2plus1d_layers()["layer1.0.conv1"]
    p = PLAN("spatial_wgrad", _gemm_sizes(layer)[0], torch.bfloat16, sms)
    assert p.splits * p.split_depth >= p.depth > (p.splits - 1) * p.split_depth
    if sms == 1:
        assert p.splits == 1
    assert PLAN("spatial_wgrad", _gemm_sizes(layer)[0], torch.bfloat16, sms) == p  # deterministic


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown GEMM"):
        PLAN("spatial_nope", [1] * 12, torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
        PLAN("spatial_fprop", [1, 1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1], torch.float64)
