"""Deprecated import path of the synthetic video set: now r2p1d_ext.data.synthetic. Kept so
that old imports and pickles still resolve (r2p1d_ext/_deprecated.py)."""
from ._deprecated import forward

__getattr__, __dir__ = forward(__name__, "r2p1d_ext.data.synthetic")
