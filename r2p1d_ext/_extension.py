"""Loading the compiled extension (r2p1d_ext/_C*.so), with a message that says what to do
when it is missing or does not load, instead of Python's "cannot import name '_C' from
partially initialized module" (which blames a circular import that is not there)."""
from __future__ import annotations

import glob
import importlib
import os
import sys

import torch

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _in_source_tree() -> bool:
    return os.path.isfile(os.path.join(os.path.dirname(_PACKAGE), "setup.py"))


def missing_message(err: ImportError) -> str:
    """What went wrong and what to run, for an ImportError of r2p1d_ext._C."""
    built = glob.glob(os.path.join(_PACKAGE, "_C*.so")) + glob.glob(os.path.join(_PACKAGE, "_C*.pyd"))
    if not built:
        what = f"r2p1d_ext's compiled extension (r2p1d_ext/_C) is not built: {_PACKAGE} holds no _C*.so"
        if _in_source_tree():
            return (f"{what}. This is a source tree: build it here with "
                    f"`{sys.executable} -m pip install --no-build-isolation -e .` (README, Install), "
                    "or run from another folder to import an installed r2p1d_ext")
        return f"{what}; reinstall r2p1d_ext from its source: pip install --no-build-isolation <source folder>"
    return (f"r2p1d_ext's compiled extension {os.path.basename(built[0])} does not load with this torch "
            f"{torch.__version__} ({err}); it was built against another torch or is damaged: rebuild it "
            "(pip install --no-build-isolation -e . in the source tree, or reinstall the package)")


def load():
    """Imports r2p1d_ext._C (its import runs the TORCH_LIBRARY registrations)."""
    try:
        return importlib.import_module("r2p1d_ext._C")
    except ImportError as err:
        raise ImportError(missing_message(err), name="r2p1d_ext._C") from err
