"""Measurement helpers shared by the tests and the benchmarks."""
from __future__ import annotations

from typing import Callable, Iterable, Tuple

import torch


def saved_activation_bytes(fn: Callable[[], object],
                           exclude: Iterable[torch.Tensor] = ()) -> Tuple[int, object]:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs, and
    fn's result. Tensors sharing a storage count once; storages of ``exclude`` (typically
    the module's parameters, which any implementation saves and which cost no extra
    memory) are left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out
