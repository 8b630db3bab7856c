"""Deprecated import path of training and evaluation: now r2p1d_ext.train (loop, evaluation,
config, distributed, reports). Kept so that old imports and pickles still resolve
(r2p1d_ext/_deprecated.py)."""
from ._deprecated import forward

__getattr__, __dir__ = forward(__name__, "r2p1d_ext.train.loop", "r2p1d_ext.train.evaluation",
                               "r2p1d_ext.train.config", "r2p1d_ext.train.distributed",
                               "r2p1d_ext.train.reports", "r2p1d_ext.models")
