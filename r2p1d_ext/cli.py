"""The ``r2p1d`` command (``python -m r2p1d_ext.cli`` or ``python -m r2p1d_ext`` too, as
torchrun runs it):

    r2p1d make-synthetic data/synthetic
    r2p1d prepare ~/kinetics400 data/k400_128 --short-side 128     # downsample a real set once
    r2p1d train --data data/synthetic --out runs/demo --arch r2plus1d_10 --epochs 10
    torchrun --nproc_per_node 2 -m r2p1d_ext.cli train --data DIR --out DIR   # several processes
    r2p1d eval --data data/synthetic --checkpoint runs/demo/checkpoint.pt
    r2p1d predict --checkpoint runs/demo/checkpoint.pt my_videos/ --out predictions.jsonl
    r2p1d export --checkpoint runs/demo/checkpoint.pt --out model.onnx --check
    r2p1d check --quick ; r2p1d bench --stages conv2_x

The sub-commands live in the application (r2p1d_ext/train/cli.py) and, for check, bench and
export, which need no [train] extra, in r2p1d_ext/tools/cli.py; this entry point runs those
three on a kernels-only install and says which extra the others need.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from ._extras import MissingExtraError

TOOLS = ("check", "bench", "export")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        from .train.cli import main as run
    except MissingExtraError as err:
        if command in TOOLS:  # these need the kernels and the models alone
            from .tools.cli import main as run_tool
            return run_tool(argv)
        name = f"r2p1d {command}" if command else "r2p1d"
        print(f"{name} needs the training dependencies (module {err.name!r} is missing): "
              "pip install 'r2p1d_ext[train]'; r2p1d check, bench and export run without them", file=sys.stderr)
        return 1
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
