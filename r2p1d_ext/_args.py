"""Argument normalisation shared by the fused module and the pure-PyTorch reference, so
both accept exactly what nn.Conv3d accepts for sizes and build the same block; and the
input normalisation constants that the data layer and the library share."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

IntOrTriple = Union[int, Sequence[int]]
Triple = Tuple[int, int, int]


def triple(value: IntOrTriple, name: str) -> Triple:
    """An int or a 3-sequence of ints as a (t, h, w) triple."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value)
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"expected {name} to be an int or a triple of ints (t, h, w), got {value!r}")
    return items  # type: ignore[return-value]


def resolve_padding(padding: Union[str, IntOrTriple], kernel: Triple, stride: Triple) -> Triple:
    """nn.Conv3d's padding: an int, a triple, 'valid' or 'same' (stride 1, odd kernels)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0)
        if padding == "same":
            if stride != (1, 1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
            if any(k % 2 == 0 for k in kernel):
                raise ValueError(
                    f"padding='same' needs odd kernel sizes (symmetric padding), got {kernel}")
            return tuple(k // 2 for k in kernel)  # type: ignore[return-value]
        raise ValueError(f"expected padding to be an int, a triple, 'valid' or 'same', got {padding!r}")
    pad = triple(padding, "padding")
    if any(p < 0 for p in pad):
        raise ValueError(f"expected non-negative padding, got {pad}")
    return pad


def check_positive(value: Triple, name: str) -> None:
    if any(v < 1 for v in value):
        raise ValueError(f"expected every {name} to be >= 1, got {value}")


def default_mid_channels(in_channels: int, out_channels: int, kernel: Triple) -> int:
    """The paper's parameter-matching count (Tran et al. 2018, section 3.5):
    floor(kt*kh*kw*C_in*C_out / (kh*kw*C_in + kt*C_out))."""
    kt, kh, kw = kernel
    return (kt * kh * kw * in_channels * out_channels) // (kh * kw * in_channels + kt * out_channels)


def block_config(in_channels: int, out_channels: int, kernel_size: IntOrTriple,
                 stride: IntOrTriple, padding: Union[str, IntOrTriple], mid_channels):
    """Validated (kernel, stride, padding, mid_channels) of a (2+1)D block."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"expected {name} to be a positive int, got {value!r}")
    kernel = triple(kernel_size, "kernel_size")
    check_positive(kernel, "kernel size")
    stride_t = triple(stride, "stride")
    check_positive(stride_t, "stride")
    pad = resolve_padding(padding, kernel, stride_t)
    if mid_channels is None:
        mid_channels = default_mid_channels(in_channels, out_channels, kernel)
        if mid_channels < 1:
            raise ValueError(
                f"the parameter-matching formula gives 0 mid channels for in_channels="
                f"{in_channels}, out_channels={out_channels}, kernel_size={kernel}; "
                "pass mid_channels explicitly")
    elif not isinstance(mid_channels, int) or mid_channels < 1:
        raise ValueError(f"expected mid_channels to be a positive int or None, got {mid_channels!r}")
    return kernel, stride_t, pad, mid_channels


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# The normalisation of torchvision's video models (Kinetics mean and std of RGB in 0-1): the
# data layer's default and normalize_clips' (r2p1d_ext/ops.py), which must agree.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
