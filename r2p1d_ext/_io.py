"""Atomic file writes, shared by the data layer (the prepare manifest) and the training
application (checkpoints, JSON logs). Standard library only."""
from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import IO, Any, Callable, List, Sequence

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".pt"


def previous(path: str) -> str:
    """Where the file before ``path``'s latest is kept (``write_atomic(keep_previous=True)``)."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.pt'}"


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = True,
                 keep_previous: bool = False, suffix: str = TMP_SUFFIX) -> None:
    """write(file) into a temp file (``.tmp-*<suffix>``) in `path`'s folder, fsync, then
    rename over `path`: a reader (or a crash) sees the old file or the new one, never half
    of one. With ``keep_previous`` the old one becomes ``previous(path)`` first."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            os.replace(path, previous(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any, indent: int = 2) -> None:
    """json.dump, atomically (write_atomic)."""
    write_atomic(path, lambda f: json.dump(obj, f, indent=indent), binary=False, suffix=".json")


def remove_stale_temporaries(folder: str, suffixes: Sequence[str] = (TMP_SUFFIX, ".json")) -> List[str]:
    """Deletes the temp files that a process killed inside write_atomic left in `folder`:
    checkpoints (``.tmp-*.pt``, each up to a whole checkpoint) and JSON files (logs,
    manifests); returns their paths. Only for a folder no live process is writing into."""
    stale = sorted(path for suffix in suffixes
                   for path in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*" + suffix)))
    for tmp in stale:
        os.unlink(tmp)
    return stale
