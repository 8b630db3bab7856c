"""Deprecated import path of the prepare manifest: now r2p1d_ext.data.manifest. Kept so that
old imports and pickles still resolve (r2p1d_ext/_deprecated.py)."""
from ._deprecated import forward

__getattr__, __dir__ = forward(__name__, "r2p1d_ext.data.manifest")
