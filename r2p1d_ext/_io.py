"""Atomic file writes, shared by the data layer (the prepare manifest) and the training
application (checkpoints, JSON logs), and the checkpoint reader that falls back to the
previous file (torch.load with weights_only=True)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import tempfile
import warnings
from typing import IO, Any, Callable, Dict, Iterator, List, Sequence

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".pt"


def previous(path: str) -> str:
    """Where the file before ``path``'s latest is kept (``write_atomic(keep_previous=True)``)."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.pt'}"


def _umask() -> int:
    """The process's umask (read from /proc on Linux: setting it to read it, the portable way,
    would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = True,
                 keep_previous: bool = False, suffix: str = TMP_SUFFIX) -> None:
    """write(file) into a temp file (``.tmp-*<suffix>``) in `path`'s folder, fsync, then
    rename over `path`: a reader (or a crash) sees the old file or the new one, never half
    of one. With ``keep_previous`` the old one becomes ``previous(path)`` first. The file
    gets the mode that ``open()`` would give it (0666 less the umask), not mkstemp's 0600: a
    checkpoint or an exported model is often read by another user (a serving container)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


class FolderBusyError(RuntimeError):
    """Another live process holds a folder's lock (exclusive): a second `r2p1d prepare` into
    the same output, a second `r2p1d train` into the same run folder."""


@contextlib.contextmanager
def exclusive(path: str, busy: Callable[[str], Exception], inherited: bool = True) -> Iterator[None]:
    """Holds the lock file `path` (its content: the holder's process id) for the block, or
    raises ``busy(holder)`` at once when a live process holds it. The kernel releases the
    lock when its holder exits, even on kill -9, so no stale lock outlives a run.

    ``inherited``: an flock, which children forked by the holder keep while they live (and
    which a second open in the same process also finds taken). Otherwise a POSIX record
    lock, which forked children do not hold: a trainer's DataLoader workers may outlive a
    killed trainer by seconds, and must not keep its restarted successor out."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            if inherited:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise busy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


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


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> Dict[str, Any]:
    """The checkpoint at ``path``; if it cannot be read, the previous one (``previous(path)``)
    with a warning naming the bad file; a clear error when neither can be read. A missing
    ``path`` beside its previous file (a writer stopped between write_atomic's two renames)
    also falls back to the previous one. ``mmap``: tensors mapped from the file, not read
    (a look at the other fields costs no I/O)."""
    import torch  # here: the data layer's users of this module need no torch at import
    prev = previous(path)
    if not os.path.exists(path):
        if not os.path.exists(prev):
            raise FileNotFoundError(f"no such checkpoint file: {path} (r2p1d train writes checkpoint.pt into "
                                    "its --out folder)")
        warnings.warn(f"checkpoint {path} is missing; using the previous one, {prev}", RuntimeWarning, stacklevel=2)
        return torch.load(prev, map_location=map_location, weights_only=True, mmap=mmap)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # truncated or corrupt: torch.load raises several kinds
        if not os.path.exists(prev):
            raise RuntimeError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}) and there is "
                               f"no {prev} to fall back to; restore it from a copy, or delete it to start over") from err
        warnings.warn(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); using the previous "
                      f"one, {prev} (delete {path} to silence this)", RuntimeWarning, stacklevel=2)
        try:
            return torch.load(prev, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as err2:
            raise RuntimeError(f"checkpoints {path} and {prev} both cannot be read ({err2}); restore one from "
                               "a copy, or delete both to start over") from err2
