"""Kernel choice of the CUDA tensor-core path (csrc/tc/plan.h), checked on the CPU for
every R(2+1)D-18/34 layer shape and the odd ones: tile shape, grid, K splits, and which
operands move in 16-byte chunks. No GPU needed: the plan is plain host C++."""
import pytest
import torch

import r2p1d_ext  # noqa: F401  (loads the library)

PLAN = torch.ops.r2p1d_tc_emulate.plan
H100_SMS = 132
BK = {torch.bfloat16: 32, torch.float16: 32, torch.float32: 16}
MAX_WORKSPACE = 64 << 20


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "tf32"])
@pytest.mark.parametrize("name", LAYERS)
def test_plan_covers_the_problem(name, dtype):
    """Every GEMM of every layer: the grid covers rows and columns, the K splits cover K
    with none empty, each split is whole K tiles, the weight-gradient workspace is bounded
    and the grid fits CUDA's limits."""
    for gemm, (tile, gm, gn, splits, split_depth, rows, cols, depth, _, _) in _plans(LAYERS[name], dtype).items():
        bm = bn = 128 if tile == 0 else 64
        assert tile in (0, 1), gemm
        assert gm * bm >= rows > (gm - 1) * bm and gn * bn >= cols > (gn - 1) * bn, gemm
        assert split_depth % BK[dtype] == 0 and splits * split_depth >= depth > (splits - 1) * split_depth, gemm
        assert gn <= 65535 and splits <= 65535 and gm < 2**31, gemm
        if gemm.endswith("wgrad"):
            assert splits * rows * cols * 4 <= MAX_WORKSPACE or splits == 1, gemm
        else:
            assert splits == 1, f"{gemm}: only the weight gradients split K"


def test_r2plus1d_18_choices():
    """The choices at batch 32, 16x112x112 clips on an H100 (132 SMs), bf16."""
    layers = r2plus1d_layers()
    conv2 = _plans(layers["layer1.0.conv1"], torch.bfloat16)
    # 1.6M output pixels: 128x128 tiles; 64 and 144 channels load in 16-byte chunks.
    assert conv2["spatial_fprop"][0] == 0 and conv2["spatial_fprop"][8:] == [1, 1]
    assert conv2["temporal_fprop"][0] == 0 and conv2["temporal_fprop"][8:] == [1, 1]
    # Weight gradients: 144 x 577 outputs are 10 large tiles; K splits make >= 2 waves.
    tile, gm, gn, splits = conv2["spatial_wgrad"][:4]
    assert gm * gn * splits >= 2 * H100_SMS and splits > 1
    # The stem: 3 input channels and 45 mid channels take element-wise loads.
    stem = _plans(layers["stem"], torch.bfloat16)
    assert stem["spatial_fprop"][8] == 0          # x has 3 channels
    assert stem["temporal_fprop"][8] == 0         # y has 45 channels
    assert stem["spatial_dgrad"][9] == 0          # the weight read along its 3 input channels
    # 230, 460 and 921 mid channels (first block of stages 2-4): not multiples of 8.
    for name in ("layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"):
        p = _plans(layers[name], torch.bfloat16)
        assert p["temporal_fprop"][8] == 0 and p["spatial_wgrad"][8] == 0, name
        assert p["spatial_fprop"][8] == 1, name   # C = 64/128/256 still vectorises
    # conv5_x (7x7 frames, 1152 mid channels) at batch 1: 98 output pixels, small tiles.
    small = _plans(LAYERS["conv5-batch1"], torch.bfloat16)
    assert small["spatial_fprop"][0] == 1


def test_tf32_vectorises_on_multiples_of_four():
    """float32 chunks are 4 elements: 460 mid channels load in chunks under TF32, not bf16."""
    layer = r2plus1d_layers()["layer3.0.conv1"]
    assert _plans(layer, torch.float32)["temporal_fprop"][8] == 1
    assert _plans(layer, torch.bfloat16)["temporal_fprop"][8] == 0


@pytest.mark.parametrize("sms", [1, 8, 132, 10000])
def test_plan_for_any_gpu_size(sms):
    """The plan adapts to the SM count (more SMs, more splits) and stays valid."""
    layer = r2plus1d_layers()["layer1.0.conv1"]
    p = PLAN("spatial_wgrad", _gemm_sizes(layer)[0], torch.bfloat16, sms)
    tile, gm, gn, splits, split_depth, rows, cols, depth = p[:8]
    assert splits * split_depth >= depth > (splits - 1) * split_depth
    if sms == 1:
        assert splits == 1
    assert PLAN("spatial_wgrad", _gemm_sizes(layer)[0], torch.bfloat16, sms) == p  # deterministic


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown GEMM"):
        PLAN("spatial_nope", [1] * 12, torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
        PLAN("spatial_fprop", [1, 1, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1], torch.float64)
