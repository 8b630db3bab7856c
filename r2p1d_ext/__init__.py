"""r2p1d_ext: R(2+1)D spatiotemporal convolution on fused C++/CUDA kernels.

    from r2p1d_ext import SpatioTemporalConv, fuse
"""
from . import ops  # noqa: F401  (loads the compiled library, registers fake/autograd)
from .fuse import fuse, unfuse
from .module import SpatioTemporalConv

__all__ = ["SpatioTemporalConv", "fuse", "unfuse", "ops"]
__version__ = "0.1.0"
