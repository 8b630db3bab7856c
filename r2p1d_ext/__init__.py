"""r2p1d_ext: R(2+1)D spatiotemporal convolution on fused C++/CUDA kernels.

    from r2p1d_ext import SpatioTemporalConv, fuse
    model = r2p1d_ext.models.r2plus1d_18(num_classes=400)

The library: ``ops`` (the operators), ``SpatioTemporalConv`` (the block), ``fuse``/``unfuse``,
``reference`` (the pure-PyTorch oracle), ``models`` (R(2+1)D networks). The training
application (``r2p1d_ext.data``, ``r2p1d_ext.train``, the ``r2p1d`` command) is imported
only when used: it needs the ``[train]`` extra. docs/architecture.md has the layers.
"""
from . import ops  # noqa: F401  (loads the compiled library, registers fake/autograd)
from . import models, reference  # noqa: F401
from .fuse import fuse, unfuse
from .module import SpatioTemporalConv

__all__ = ["SpatioTemporalConv", "fuse", "unfuse", "ops", "models", "reference"]
__version__ = "0.2.0"
