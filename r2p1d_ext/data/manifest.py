"""The manifest of a prepared video folder (``DST/manifest.json``, written by
:func:`r2p1d_ext.data.prepare.prepare`): the settings the folder was prepared with and one row per
video (output path relative to DST, source path relative to the source folder, frames, fps,
width, height, bytes, codec, keyframe interval). :class:`~r2p1d_ext.data.dataset.VideoDataset` reads the frame counts from it
instead of opening every file at start-up; a row is used only while its file still has the
recorded size, so a file replaced after preparation is probed again.

Format 2 (``r2p1d-prepare/2``) records the codec and keyframe interval of every file. A
format-1 manifest (OpenCV's mp4v files, whose writer put a keyframe every 12 frames) is
still read, its rows given codec "mp4v" and interval 12, so that ``prepare`` rewrites them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from .._io import write_json_atomic

NAME = "manifest.json"
FORMAT = "r2p1d-prepare/2"
FORMAT_1 = "r2p1d-prepare/1"
ROW_KEYS = ("output", "source", "frames", "fps", "width", "height", "bytes")
FORMAT_1_FILES = {"codec": "mp4v", "keyframe_interval": 12}  # what a format-1 manifest's files are


class ManifestError(ValueError):
    pass


def path_in(root: str) -> str:
    return os.path.join(root, NAME)


def write(path: str, settings: Dict[str, Any], rows: List[Dict[str, Any]],
          failed: List[Dict[str, str]], complete: bool, source: str) -> None:
    """Atomically (temp file + rename): a reader sees the old manifest or the new one."""
    doc = {"format": FORMAT, "settings": settings, "source": source, "complete": complete,
           "videos": sorted(rows, key=lambda r: r["output"]),
           "failed": sorted(failed, key=lambda r: r["source"])}
    write_json_atomic(path, doc, indent=1)


def read(path: str) -> Dict[str, Any]:
    """The manifest document; ManifestError naming the file and what is wrong with it."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as err:
        raise ManifestError(f"manifest {path} is not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, FORMAT_1):
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(f"expected manifest {path} to have format {FORMAT!r} (or {FORMAT_1!r}), got {got!r}")
    rows = doc.get("videos")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) for r in rows):
        raise ManifestError(f"manifest {path}: expected 'videos' to be a list of rows with keys {ROW_KEYS}")
    if doc["format"] == FORMAT_1:
        for r in rows:
            for k, v in FORMAT_1_FILES.items():
                r.setdefault(k, v)
    return doc


def rows_by_output(doc: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Rows keyed by their output path ('/'-separated, relative to the prepared folder)."""
    return {} if doc is None else {r["output"]: r for r in doc["videos"]}


def row_matches(row: Optional[Dict[str, Any]], path: str) -> bool:
    """The row still describes the file at `path` (same size in bytes, frames known)."""
    if row is None or not isinstance(row.get("frames"), int) or row["frames"] < 1:
        return False
    try:
        return os.path.getsize(path) == row["bytes"]
    except OSError:
        return False
