"""The boundary of the optional dependencies: ``r2p1d_ext.data`` and ``r2p1d_ext.train``
need the ``[train]`` extra (PyAV, OpenCV, NumPy, tqdm); the kernel library and the models need
torch alone. Each of those subpackages checks its extra when it is imported, so a missing
package is one clear error naming what to install, not a failure deep in a call."""
from __future__ import annotations

import importlib
from typing import Sequence

TRAIN = ("av", "cv2", "numpy", "tqdm")


class MissingExtraError(ImportError):
    """An optional dependency of a subpackage is not installed; ``name`` is the module."""


def require(package: str, extra: str, modules: Sequence[str]) -> None:
    """Import each of `modules`, or raise MissingExtraError naming `package` and the pip
    command of `extra`."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingExtraError(
                f"{package} needs the {extra} dependencies (module {module!r} is missing): "
                f"pip install 'r2p1d_ext[{extra}]'", name=module) from err
