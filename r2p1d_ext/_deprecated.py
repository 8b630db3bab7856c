"""Re-export modules for the import paths of the flat layout (``r2p1d_ext.network``,
``.dataset``, ``.trainer``, ...; docs/architecture.md lists where each moved). Every name
still resolves, with a DeprecationWarning that names its new module, and pickles that name
an old path still load."""
from __future__ import annotations

import importlib
import sys
import warnings
from typing import Callable, List, Tuple


def forward(old: str, *new: str) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for the module `old`: attributes come from the first of
    the modules `new` that has them."""

    def __getattr__(name: str):
        if not name.startswith("__"):
            for target in new:
                module = importlib.import_module(target)
                if hasattr(module, name):
                    value = getattr(module, name)
                    # Name the module that defines it (targets re-export some names), where
                    # it goes by the same name there.
                    home = getattr(value, "__module__", None)
                    defined = isinstance(home, str) and home.startswith("r2p1d_ext.") and \
                        getattr(sys.modules.get(home), name, None) is value
                    home = home if defined else target
                    warnings.warn(f"{old}.{name} is deprecated: use {home}.{name} ({old} moved)",
                                  DeprecationWarning, stacklevel=2)
                    return value
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted({n for target in new for n in dir(importlib.import_module(target))
                       if not n.startswith("__")})

    return __getattr__, __dir__
