"""The ``r2p1d`` command (``python -m r2p1d_ext.cli`` or ``python -m r2p1d_ext`` too, as
torchrun runs it):

    r2p1d make-synthetic data/synthetic
    r2p1d prepare ~/kinetics400 data/k400_128 --short-side 128     # downsample a real set once
    r2p1d train --data data/synthetic --out runs/demo --arch r2plus1d_10 --epochs 10
    torchrun --nproc_per_node 2 -m r2p1d_ext.cli train --data DIR --out DIR   # several processes
    r2p1d eval --data data/synthetic --checkpoint runs/demo/checkpoint.pt

The sub-commands live in the training application (r2p1d_ext/train/cli.py); this entry point
only says which extra to install when a kernels-only install lacks its dependencies.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from ._extras import MissingExtraError


def main(argv: Optional[List[str]] = None) -> int:
    try:
        from .train.cli import main as run
    except MissingExtraError as err:
        print(f"r2p1d needs the training dependencies (module {err.name!r} is missing): "
              "pip install 'r2p1d_ext[train]'", file=sys.stderr)
        return 1
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
