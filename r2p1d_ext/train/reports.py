"""What a training run leaves in its folder besides the checkpoint: ``log.csv`` (one row per
epoch), ``metrics.json``, TensorBoard scalars (when the tensorboard package is installed),
``curves.png`` and ``confusion.png`` (when matplotlib is), and the epoch line it prints."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List

import numpy as np

from .._cli_common import plural
from .._io import write_json_atomic


def write_json(path: str, obj) -> None:
    write_json_atomic(path, obj)


def append_csv(path: str, row: Dict[str, Any]) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def shows_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer it is always 1."""
    return num_classes > 5


def epoch_line(row: Dict[str, Any], num_classes: int) -> str:
    top5 = f"top-5 {row['val_top5']:.3f} " if shows_top5(num_classes) else ""
    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f} | "
            f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} {top5}"
            f"video top-1 {row['val_video_top1']:.3f} | {plural(row['skipped_videos'], 'video')} skipped")


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(history: List[Dict[str, Any]], path: str, num_classes: int) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch"); a.set_ylabel("cross-entropy"); a.legend(); a.set_title("loss")
    for key, label in (("train_top1", "train clip top-1"), ("val_top1", "val clip top-1"),
                       ("val_top5", "val clip top-5"), ("val_video_top1", "val video top-1")):
        if key == "val_top5" and not shows_top5(num_classes):
            continue
        b.plot(epochs, [h[key] for h in history], "o-", label=label)
    b.set_ylim(0, 1.02); b.set_xlabel("epoch"); b.set_ylabel("accuracy"); b.legend(fontsize=8)
    b.set_title("accuracy")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    return True


def plot_confusion(confusion: List[List[int]], classes: List[str], path: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title("validation videos")
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    return True


class TensorBoard:
    """TensorBoard scalars when the tensorboard package is installed; nothing otherwise."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(folder)
        except (ImportError, ModuleNotFoundError):
            self.writer = None

    def log(self, row: Dict[str, Any], step: int):
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()


class EpochReports:
    """Rank 0's reports of a run folder, written after every epoch (each file whole: the CSV
    gains a row, the JSON and PNGs are replaced)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.tensorboard = TensorBoard(os.path.join(folder, "tensorboard"))

    def write(self, row: Dict[str, Any], history: List[Dict[str, Any]], classes: List[str],
              confusion: List[List[int]]) -> Dict[str, Any]:
        """Logs `row` (already appended to `history`); returns the metrics.json document."""
        append_csv(os.path.join(self.folder, "log.csv"), row)
        self.tensorboard.log(row, row["step"])
        result = {**row, "classes": classes, "confusion": confusion, "history": history}
        write_json(os.path.join(self.folder, "metrics.json"), result)
        plot_curves(history, os.path.join(self.folder, "curves.png"), len(classes))
        plot_confusion(confusion, classes, os.path.join(self.folder, "confusion.png"))
        return result
