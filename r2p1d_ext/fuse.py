"""fuse(model): replace every unfused (2+1)D block of a model by the fused module;
unfuse(model): the way back, to plain PyTorch modules.

Recognised blocks:
  * r2p1d_ext.reference.SpatioTemporalConv (and the original R2Plus1D-PyTorch layout);
  * any nn.Sequential run Conv3d(1,kh,kw) -> BatchNorm3d -> ReLU -> Conv3d(kt,1,1): this is
    torchvision's Conv2Plus1D and the first four modules of its R2Plus1dStem (45 mid channels).
and around them, so that a network's eval forward runs folded (r2p1d_ext/conv_bn.py):
  * nn.Sequential(fused block, BatchNorm3d[, ReLU]) -> conv_bn.ConvBN (same children);
  * torchvision's video BasicBlock -> models.BasicBlock (same children; its downsample
    Sequential(Conv3d, BatchNorm3d) -> ConvBN), whose eval forward is one op per conv.
Weights and BatchNorm state move over as they are (the same Parameter and buffer objects),
so outputs are unchanged (up to float rounding, in eval, where BatchNorm is folded). Each fused block remembers where it came from (``_unfuse_as``:
"reference", "sequential" for a whole 4-module Sequential such as Conv2Plus1D, "splice"
for 4 modules inside a longer one such as R2Plus1dStem), so that unfuse() restores that
layout and its state_dict names.
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import nn

from . import reference
from .conv_bn import BATCH_NORMS, ConvBN
from .models.video_resnet import BasicBlock
from .module import SpatioTemporalConv


def _plain_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv3d and conv.groups == 1 and conv.dilation == (1, 1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def _block_from(conv_s: nn.Module, bn: nn.Module, relu: nn.Module,
                conv_t: nn.Module) -> Optional[SpatioTemporalConv]:
    """The fused block computing conv_t(relu(bn(conv_s(x)))), or None if these modules are
    not a (2+1)D block the kernels compute."""
    if not (_plain_conv(conv_s) and _plain_conv(conv_t) and type(relu) is nn.ReLU
            and type(bn) in BATCH_NORMS):
        return None
    if (conv_s.kernel_size[0], conv_s.stride[0], conv_s.padding[0]) != (1, 1, 0):
        return None
    if conv_t.kernel_size[1:] != (1, 1) or conv_t.stride[1:] != (1, 1) or conv_t.padding[1:] != (0, 0):
        return None
    mid = conv_s.out_channels
    if bn.num_features != mid or conv_t.in_channels != mid:
        return None
    fused = SpatioTemporalConv(
        conv_s.in_channels, conv_t.out_channels,
        (conv_t.kernel_size[0], conv_s.kernel_size[1], conv_s.kernel_size[2]),
        stride=(conv_t.stride[0], conv_s.stride[1], conv_s.stride[2]),
        padding=(conv_t.padding[0], conv_s.padding[1], conv_s.padding[2]),
        bias=False, mid_channels=mid)
    # Take the original modules themselves: parameters, buffers, device and dtype carry over.
    fused.spatial_conv, fused.bn, fused.temporal_conv = conv_s, bn, conv_t
    fused._unfuse_as, fused._relu_inplace = "reference", relu.inplace
    return fused.train(bn.training)


def _fuse_sequential(seq: nn.Sequential) -> nn.Module:
    mods: List[nn.Module] = list(seq)
    out: List[nn.Module] = []
    i = 0
    while i < len(mods):
        fused = _block_from(*mods[i:i + 4]) if i + 4 <= len(mods) else None
        if fused is None:
            out.append(mods[i])
            i += 1
        else:
            fused._unfuse_as = "sequential" if len(mods) == 4 else "splice"
            out.append(fused)
            i += 4
    if len(out) == len(mods):
        return seq
    return out[0] if len(out) == 1 else nn.Sequential(*out).train(seq.training)


def _conv_bn_layout(seq: nn.Module, conv_type=SpatioTemporalConv) -> bool:
    """nn.Sequential(conv, BatchNorm3d[, ReLU]), the conv a fused block (or conv_type)."""
    mods = list(seq) if type(seq) is nn.Sequential else []
    return (len(mods) in (2, 3) and isinstance(mods[0], conv_type)
            and type(mods[1]) in BATCH_NORMS
            and (len(mods) == 2 or type(mods[2]) is nn.ReLU))


def _as_conv_bn(seq: nn.Sequential) -> ConvBN:
    return ConvBN(*seq).train(seq.training)


def _torchvision_basic_block(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__name__ == "BasicBlock" and kind.__module__ == "torchvision.models.video.resnet"


def _moved(module: nn.Module, cls: type, names) -> nn.Module:
    """A `cls` instance holding `module`'s children and attributes `names` (no __init__:
    the modules themselves move, as in _block_from)."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for name in names:
        setattr(new, name, getattr(module, name))
    return new.train(module.training)


_BASIC_BLOCK_PARTS = ("conv1", "conv2", "relu", "downsample", "stride")


def _adopt_basic_block(block: nn.Module) -> nn.Module:
    """torchvision's BasicBlock (convs already fused) as models.BasicBlock, whose eval
    forward folds; unfuse() gives the torchvision class back."""
    if not (_conv_bn_layout(block.conv1) or isinstance(block.conv1, ConvBN)):
        return block  # a conv fuse() could not fuse: torchvision's forward stays
    new = _moved(block, BasicBlock, _BASIC_BLOCK_PARTS)
    for name in ("conv1", "conv2"):
        if _conv_bn_layout(getattr(new, name)):
            setattr(new, name, _as_conv_bn(getattr(new, name)))
    if new.downsample is not None and _conv_bn_layout(new.downsample, nn.Conv3d):
        new.downsample = _as_conv_bn(new.downsample)
    new._unfuse_cls = type(block)
    return new


def _fuse_module(module: nn.Module) -> nn.Module:
    if isinstance(module, reference.SpatioTemporalConv):
        return _block_from(module.spatial_conv, module.bn, module.relu, module.temporal_conv)
    for name, child in list(module.named_children()):
        new = _fuse_module(child)
        if new is not child:
            setattr(module, name, new)
    if _torchvision_basic_block(module):
        return _adopt_basic_block(module)
    if isinstance(module, nn.Sequential):
        module = _fuse_sequential(module)
        return _as_conv_bn(module) if _conv_bn_layout(module) else module
    return module


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every unfused (2+1)D block replaced by
    :class:`r2p1d_ext.SpatioTemporalConv`. With ``inplace=False`` (the default) the model is
    deep-copied first and left untouched."""
    if not inplace:
        model = copy.deepcopy(model)
    return _fuse_module(model)


# ------------------------------------------------------------------ the way back
def _parts(block: SpatioTemporalConv) -> List[nn.Module]:
    """The block's four modules, in the order torchvision's Conv2Plus1D holds them."""
    relu = nn.ReLU(inplace=getattr(block, "_relu_inplace", False))
    return [block.spatial_conv, block.bn, relu, block.temporal_conv]


def _plain_block(block: SpatioTemporalConv) -> nn.Module:
    """The plain-PyTorch module in the block's place (its layout before fuse(); ours, the
    reference block with the same state_dict names, for a block built fused)."""
    if getattr(block, "_unfuse_as", "reference") == "sequential":
        return nn.Sequential(*_parts(block)).train(block.training)
    with torch.device("meta"):  # a shell: its modules are replaced by the block's own
        plain = reference.SpatioTemporalConv(
            block.in_channels, block.out_channels, block.kernel_size, block.stride, block.padding,
            bias=block.spatial_conv.bias is not None, mid_channels=block.mid_channels)
    plain.spatial_conv, plain.bn, plain.temporal_conv = block.spatial_conv, block.bn, block.temporal_conv
    plain.relu = _parts(block)[2]
    return plain.train(block.training)


def _spliced(module: nn.Module) -> bool:
    return getattr(module, "_unfuse_as", None) == "splice"


def _unfuse_module(module: nn.Module) -> nn.Module:
    if isinstance(module, SpatioTemporalConv):
        return _plain_block(module)
    if isinstance(module, nn.Sequential) and any(_spliced(m) for m in module):
        mods: List[nn.Module] = []
        for m in module:
            mods += _parts(m) if _spliced(m) else [_unfuse_module(m)]
        return nn.Sequential(*mods).train(module.training)
    for name, child in list(module.named_children()):
        new = _unfuse_module(child)
        if new is not child:
            setattr(module, name, new)
    if isinstance(module, ConvBN):
        return nn.Sequential(*module).train(module.training)
    if isinstance(module, BasicBlock) and "_unfuse_cls" in module.__dict__:
        return _moved(module, module._unfuse_cls, _BASIC_BLOCK_PARTS)
    return module


def unfuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every fused block replaced by plain PyTorch modules: the layout
    fuse() found (torchvision's Conv2Plus1D/R2Plus1dStem layout for a fused torchvision
    model, so its state_dict names are torchvision's again), or
    :class:`r2p1d_ext.reference.SpatioTemporalConv` (the same names as the fused module)
    for blocks built fused. Parameters and buffers are the same objects, so outputs are
    unchanged; the result needs no r2p1d_ext kernel (TorchScript, other runtimes).
    With ``inplace=False`` (the default) the model is deep-copied first."""
    if not inplace:
        model = copy.deepcopy(model)
    return _unfuse_module(model)
