"""Checkpoints: written atomically (temp file + rename, r2p1d_ext/_io.py), the previous one
kept as ``<name>.prev.pt``, loaded with weights_only=True (falling back to the previous one,
with a warning, when the latest cannot be read). Random-number-generator states are stored
as tensors and plain lists so that the safe loader accepts them."""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

from .._io import load_checkpoint as load  # noqa: F401  (this module's API)
from .._io import TMP_SUFFIX, previous, remove_stale_temporaries, write_atomic  # noqa: F401


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Dict[str, Any], path: str, keep_previous: bool = False) -> None:
    """torch.save, atomically (write_atomic). ``keep_previous`` keeps the old checkpoint as
    ``previous(path)``, so that one damaged after it was written (a full disk, a bad copy)
    still leaves a good one."""
    write_atomic(path, lambda f: torch.save(obj, f), keep_previous=keep_previous)
