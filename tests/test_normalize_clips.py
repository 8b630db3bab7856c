"""normalize_clips: uint8 NTHWC clips to the network's input in one pass, against the NumPy
float32 arithmetic the workers used before (bitwise), every dtype, 4-D and 5-D, random shapes,
opcheck, bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import DEVICES
from r2p1d_ext.ops import KINETICS_MEAN, KINETICS_STD, normalize_clips


def reference(clips: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - 255 mean) / (255 std) in NumPy float32, channels moved first."""
    m = np.asarray(mean, dtype=np.float32) * 255
    s = np.asarray(std, dtype=np.float32) * 255
    out = (clips.cpu().numpy().astype(np.float32) - m) / s
    return torch.from_numpy(np.moveaxis(out, -1, -4).copy())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_matches_the_float32_reference_bitwise(device, dtype):
    clips = torch.randint(0, 256, (3, 5, 7, 9, 3), dtype=torch.uint8, device=device)
    got = normalize_clips(clips, dtype=dtype)
    assert got.shape == (3, 3, 5, 7, 9) and got.dtype == dtype and got.device == clips.device
    assert got.is_contiguous(memory_format=torch.channels_last_3d)  # the input's memory order
    assert torch.equal(got.cpu(), reference(clips, KINETICS_MEAN, KINETICS_STD).to(dtype))
    one = normalize_clips(clips[1], dtype=dtype)  # one clip (T, H, W, C)
    assert one.shape == (3, 5, 7, 9) and torch.equal(one, got[1])


@pytest.mark.parametrize("device", DEVICES)
def test_every_byte_value_and_odd_sizes(device):
    """All 256 values in each channel, sizes that are not multiples of 4 (the CUDA kernel's
    32-bit loads and their tail), a view at an odd offset, and a non-contiguous input."""
    values = torch.arange(256, dtype=torch.uint8, device=device).repeat(3).reshape(1, 1, 16, 16, 3)
    assert torch.equal(normalize_clips(values).cpu(), reference(values, KINETICS_MEAN, KINETICS_STD))
    base = torch.randint(0, 256, (1 + 2 * 3 * 5 * 7 * 1,), dtype=torch.uint8, device=device)
    odd = base[1:].view(2, 3, 5, 7, 1)
    assert torch.equal(normalize_clips(odd, [0.5], [0.25]).cpu(), reference(odd, [0.5], [0.25]))
    strided = torch.randint(0, 256, (2, 4, 6, 8, 3), dtype=torch.uint8, device=device)[:, ::2, :, 1::3]
    assert torch.equal(normalize_clips(strided).cpu(), reference(strided, KINETICS_MEAN, KINETICS_STD))
    empty = torch.empty(0, 4, 6, 6, 3, dtype=torch.uint8, device=device)
    assert normalize_clips(empty).shape == (0, 3, 4, 6, 6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), t=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_random_shapes_and_channels(n, t, h, w, c, seed):
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (n, t, h, w, c), dtype=torch.uint8, generator=g)
    mean = (torch.rand(c, generator=g)).tolist()
    std = (torch.rand(c, generator=g) + 0.05).tolist()
    assert torch.equal(normalize_clips(clips, mean, std), reference(clips, mean, std))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    clips = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8, device=device)
    torch.library.opcheck(torch.ops.r2p1d.normalize_clips.default,
                          (clips, list(KINETICS_MEAN), list(KINETICS_STD), torch.float32))
    torch.library.opcheck(torch.ops.r2p1d.normalize_clips.default, (clips[0], [0.5] * 3, [0.2] * 3, torch.bfloat16))


def test_bad_input_says_what_was_expected():
    clips = torch.zeros(2, 3, 4, 5, 3, dtype=torch.uint8)
    for args, message in [((clips.float(),), "expects uint8 clips, but got Float"),
                          ((clips[0, 0],), r"expects clips of shape \(T, H, W, C\) or \(N, T, H, W, C\)"),
                          ((torch.zeros(2, 3, 4, 5, 6, dtype=torch.uint8),), "1 to 4 channels last"),
                          ((clips, [0.5, 0.5], [0.2] * 3), r"one mean and one std per channel \(3\)"),
                          ((clips, [0.5] * 3, [0.2, 0.0, 0.2]), "std > 0"),
                          ((clips, KINETICS_MEAN, KINETICS_STD, torch.int32), "floating-point dtype")]:
        with pytest.raises(RuntimeError, match=message):
            normalize_clips(*args)
        with torch._subclasses.fake_tensor.FakeTensorMode():  # the fake kernel says the same
            fake_args = (torch.empty(args[0].shape, dtype=args[0].dtype),) + args[1:]
            with pytest.raises((RuntimeError, ValueError), match=message.replace("Float", "torch.float32")
                               .replace("expects", "expected")):
                normalize_clips(*fake_args)
