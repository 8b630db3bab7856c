"""The field's annotation files, read into the list of videos of one subset (``train``, ``val``
or ``test``) of one official split. Beside the folder layout ``root/{split}/{class}/{video}``
the datasets are published with:

* **UCF101**: a folder with ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0N.txt``
  (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``) and ``testlist0N.txt`` (paths only), N
  the split, 1-3. The class of a video is the folder of its path.
* **HMDB51**: a folder with ``<class>_test_split<N>.txt``, one line per video of the class:
  ``<name>.avi 1`` (training), ``2`` (test) or ``0`` (in neither); videos at
  ``<class>/<name>``. Classes in alphabetical order (as torchvision and MMAction2 number them).
* **Kinetics**: CSV files ``label,youtube_id,time_start,time_end,split`` (an ``is_cc``
  column is ignored): a folder holding ``train.csv`` and ``validate.csv`` (or ``val.csv``;
  ``test.csv`` when it has labels), or one CSV whose ``split`` column says each row's subset.
  Files named ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` as the common downloaders write
  them, in any folder under the root. Classes: the labels in alphabetical order.
* **Path lists** (MMAction2's): lines ``<path> <label>``, the path relative to the root, the
  label a class index (0-based) or a class name; a folder of lists named after their subset
  (``train.txt``/``*train*.txt``, ``val``, ``test``), or one list file for one subset.

A listed video is found under ``root`` by its path (its extension may differ: ``r2p1d
prepare`` writes .mp4 files beside the sources' names), else by its file name anywhere under
the root (Kinetics, or a flattened copy). Listed videos with no file are counted in
``Listing.missing`` and reported once by the caller, never a crash and never silently
dropped. Symbolic links are followed.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .video import VIDEO_EXTENSIONS, is_hidden

FORMATS = ("ucf101", "hmdb51", "kinetics", "list")
SUBSETS = ("train", "val", "test")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


class AnnotationError(ValueError):
    """An annotation file that cannot be read as its format: names the file and the line."""


@dataclasses.dataclass
class Listing:
    """The videos of one subset: class names in label order; (path, label) of each video
    found; the listed entries with no file; the annotation file(s) read."""
    classes: List[str]
    videos: List[Tuple[str, int]]
    missing: List[str]
    source: str

    def empty_classes(self) -> List[str]:
        """Classes with no video in this subset (an unused class of a split, or all missing)."""
        have = {label for _, label in self.videos}
        return [c for i, c in enumerate(self.classes) if i not in have]


# ---------------------------------------------------------------------- which format
def detect_format(path: str) -> str:
    """The format of the annotation path: a UCF101 folder (or its classInd.txt), an HMDB51
    folder, Kinetics CSV (a .csv file, or a folder with train.csv), else a path list."""
    if os.path.isfile(path):
        if os.path.basename(path).lower() == "classind.txt":
            return "ucf101"
        return "kinetics" if path.lower().endswith(".csv") else "list"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"expected the annotations to be a file or folder, got {path!r} (no such path)")
    names = os.listdir(path)
    lower = {n.lower() for n in names}
    if "classind.txt" in lower:
        return "ucf101"
    if any(re.search(r"_test_split\d+\.txt$", n) for n in names):
        return "hmdb51"
    if any(n.endswith(".csv") for n in lower):
        return "kinetics"
    if any(n.endswith(".txt") for n in lower):
        return "list"
    raise AnnotationError(f"{path} holds no annotation files (expected UCF101's classInd.txt and "
                          "trainlist0N.txt, HMDB51's <class>_test_splitN.txt, Kinetics CSV files or path lists)")


def read_annotations(path: str, root: str, subset: str, fold: int = 1, fmt: str = "auto",
                     classes: Optional[Sequence[str]] = None,
                     extensions: Sequence[str] = VIDEO_EXTENSIONS, index: Optional["FileIndex"] = None) -> Listing:
    """The videos of `subset` ("train", "val" or "test"; UCF101 and HMDB51 have no val: their
    test lists serve for both) of official split `fold` (UCF101, HMDB51: 1-3), found under
    `root`. `fmt`: one of FORMATS or "auto" (detect_format). `classes`, when given (a
    checkpoint's), fixes the class list: the listed classes must be among them. `index`: a
    FileIndex of `root` already made (reading several subsets walks the root once)."""
    if subset not in SUBSETS:
        raise ValueError(f"expected subset to be one of {SUBSETS}, got {subset!r}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"expected the annotation format to be 'auto' or one of {FORMATS}, got {fmt!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"expected the video root {root!r} to be a folder")
    reader = {"ucf101": _ucf101, "hmdb51": _hmdb51, "kinetics": _kinetics, "list": _path_list}[fmt]
    names, entries, source = reader(path, subset, fold)
    names, entries = _fix_classes(names, entries, classes, source)
    index = index or FileIndex(root, extensions)
    label_of = {c: i for i, c in enumerate(names)}
    videos, missing = [], []
    for rel, cls in entries:
        found = index.find(rel)
        if found is None:
            missing.append(rel)
        else:
            videos.append((found, label_of[cls]))
    return Listing(names, videos, missing, source)


def _fix_classes(names: List[str], entries: List[Tuple[str, str]], classes: Optional[Sequence[str]],
                 source: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The class list and entries against a fixed class list (a checkpoint's): the listed
    names must be among them; a list of class indices indexes them."""
    if classes is None:
        return names, entries
    fixed = list(classes)
    listed = {c for _, c in entries}
    if listed and all(c.isdigit() for c in listed) and not listed <= set(fixed):
        if max(int(c) for c in listed) >= len(fixed):
            raise AnnotationError(f"{source} has class indices up to {max(int(c) for c in listed)}, the model "
                                  f"has {len(fixed)} classes")
        return fixed, [(p, fixed[int(c)]) for p, c in entries]
    unknown = sorted(listed - set(fixed))
    if unknown:
        raise AnnotationError(f"{source} lists classes the model does not have: {', '.join(unknown[:5])}"
                              f"{', ...' if len(unknown) > 5 else ''}")
    return fixed, entries


# ---------------------------------------------------------------------- finding the files
class FileIndex:
    """The video files under a root, by relative path without extension and by file stem."""

    def __init__(self, root: str, extensions: Sequence[str] = VIDEO_EXTENSIONS):
        exts = tuple(e.lower() for e in extensions)
        self.root = root
        self.by_rel: Dict[str, str] = {}
        self.by_stem: Dict[str, Optional[str]] = {}
        walked = set()
        for folder, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in walked:  # a link back to a folder already walked
                dirs[:] = []
                continue
            walked.add(real)
            dirs[:] = sorted(d for d in dirs if not is_hidden(d))
            for f in sorted(files):
                if is_hidden(f) or not f.lower().endswith(exts):
                    continue
                path = os.path.join(folder, f)
                rel = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")
                self.by_rel.setdefault(rel, path)
                stem = os.path.splitext(f)[0]
                self.by_stem[stem] = path if stem not in self.by_stem else None  # None: ambiguous

    def find(self, listed: str) -> Optional[str]:
        rel = os.path.splitext(listed.replace("\\", "/").lstrip("./"))[0]
        if rel in self.by_rel:
            return self.by_rel[rel]
        return self.by_stem.get(os.path.basename(rel))


# ---------------------------------------------------------------------- the formats
def _lines(path: str) -> Iterable[Tuple[int, List[str]]]:
    """(line number, fields) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected the annotation file {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield number, fields


def _check_fold(fold: int, fmt: str) -> None:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= 3:
        raise ValueError(f"{fmt} has official splits 1, 2 and 3; got split {fold!r}")


def _ucf101(path: str, subset: str, fold: int):
    _check_fold(fold, "UCF101")
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    names: Dict[int, str] = {}
    ind = os.path.join(folder, "classInd.txt")
    for number, fields in _lines(ind):
        if len(fields) != 2 or not fields[0].isdigit():
            raise AnnotationError(f"{ind}:{number}: expected '<index> <class>', got {' '.join(fields)!r}")
        names[int(fields[0])] = fields[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise AnnotationError(f"{ind}: expected the class indices 1..{len(names)}, got {sorted(names)[:5]}...")
    classes = [names[i] for i in range(1, len(names) + 1)]
    known = set(classes)
    source = os.path.join(folder, f"{'train' if subset == 'train' else 'test'}list0{fold}.txt")
    entries = []
    for number, fields in _lines(source):
        cls = fields[0].replace("\\", "/").split("/")[0]
        if "/" not in fields[0].replace("\\", "/") or cls not in known:
            raise AnnotationError(f"{source}:{number}: expected '<class>/<video>' with a class of classInd.txt, "
                                  f"got {fields[0]!r}")
        entries.append((fields[0], cls))
    return classes, entries, source


def _hmdb51(path: str, subset: str, fold: int):
    _check_fold(fold, "HMDB51")
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    files = sorted(glob.glob(os.path.join(glob.escape(folder), f"*_test_split{fold}.txt")))
    if not files:
        raise AnnotationError(f"{folder} holds no HMDB51 split files <class>_test_split{fold}.txt")
    wanted = "1" if subset == "train" else "2"
    classes, entries = [], []
    for source in files:
        cls = os.path.basename(source)[:-len(f"_test_split{fold}.txt")]
        classes.append(cls)
        for number, fields in _lines(source):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise AnnotationError(f"{source}:{number}: expected '<video> <0|1|2>', got {' '.join(fields)!r}")
            if fields[1] == wanted:
                entries.append((f"{cls}/{fields[0]}", cls))
    return classes, entries, os.path.join(folder, f"*_test_split{fold}.txt")


_KINETICS_FILES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv", "valid.csv"), "test": ("test.csv",)}
_KINETICS_SPLITS = {"train": ("train", "training"), "val": ("val", "validate", "validation", "valid"),
                    "test": ("test", "testing")}


def _kinetics_rows(source: str) -> List[Tuple[int, Dict[str, str]]]:
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        lacking = [c for c in KINETICS_COLUMNS[1:] if c not in header]
        if lacking:
            raise AnnotationError(f"{source}: expected the Kinetics columns {','.join(KINETICS_COLUMNS)},split; "
                                  f"the header {','.join(header)} lacks {', '.join(lacking)}")
        return [(n + 2, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for n, row in enumerate(reader)]


def _kinetics(path: str, subset: str, fold: int):
    if os.path.isdir(path):
        # The subsets' files only (a folder may hold others, e.g. a class list).
        everything = [os.path.join(path, n) for names in _KINETICS_FILES.values() for n in names
                      if os.path.isfile(os.path.join(path, n))]
        mine = [os.path.join(path, n) for n in _KINETICS_FILES[subset] if os.path.isfile(os.path.join(path, n))]
        if not mine:
            raise AnnotationError(f"{path} holds no {' or '.join(_KINETICS_FILES[subset])} for the {subset} subset")
        source, rows, by_split = mine[0], _kinetics_rows(mine[0]), False
    else:
        everything, source, by_split = [path], path, True
        rows = _kinetics_rows(path)
        if rows and "split" not in rows[0][1]:
            by_split = False  # one subset's file
    # The class list of every file: the same labels in train and val, whichever is read.
    labels = set()
    for other in everything:
        labels.update(r["label"] for _, r in (rows if other == source else _kinetics_rows(other)) if r.get("label"))
    if not labels:
        raise AnnotationError(f"{source}: no row has a label (Kinetics' test.csv is published without them)")
    entries = []
    for number, row in rows:
        if by_split and row.get("split", "").lower() not in _KINETICS_SPLITS[subset]:
            continue
        if not row.get("label"):
            raise AnnotationError(f"{source}:{number}: no label (a test file without labels cannot be evaluated)")
        try:
            name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        except ValueError:
            raise AnnotationError(f"{source}:{number}: expected numeric time_start and time_end, got "
                                  f"{row.get('time_start')!r}, {row.get('time_end')!r}") from None
        entries.append((name, row["label"]))
    return sorted(labels), entries, source


def _list_files(path: str, subset: str) -> Tuple[str, List[str]]:
    """The list of `subset` in a folder of lists (named after their subset), and every list."""
    lists = sorted(glob.glob(os.path.join(glob.escape(path), "*.txt")))
    words = {"train": ("train",), "val": ("val",), "test": ("test",)}[subset]
    mine = [f for f in lists if any(w in os.path.basename(f).lower() for w in words)]
    if subset == "val" and not mine:  # lists published with a test list only (UCF101-style)
        mine = [f for f in lists if "test" in os.path.basename(f).lower()]
    if len(mine) != 1:
        raise AnnotationError(f"expected one {subset} list (a .txt named after it) in {path}, found "
                              f"{[os.path.basename(m) for m in mine] or 'none'}")
    return mine[0], lists


def _path_list(path: str, subset: str, fold: int):
    if os.path.isdir(path):
        source, lists = _list_files(path, subset)
    else:
        source, lists = path, [path]
    parsed = {f: _parse_list(f) for f in lists}
    every = [label for rows in parsed.values() for _, label in rows]
    if all(label.isdigit() for label in every):
        count = max(int(label) for label in every) + 1
        classes = [str(i) for i in range(count)]
    else:
        classes = sorted(set(every))
    return classes, [(p, str(int(l)) if l.isdigit() else l) for p, l in parsed[source]], source


def _parse_list(source: str) -> List[Tuple[str, str]]:
    rows = []
    for number, fields in _lines(source):
        if len(fields) < 2:
            raise AnnotationError(f"{source}:{number}: expected '<path> <label>', got {' '.join(fields)!r}")
        rows.append((" ".join(fields[:-1]), fields[-1]))
    return rows
