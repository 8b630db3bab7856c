"""What a training run leaves in its folder besides the checkpoint: ``log.csv`` (one row per
epoch), ``steps.csv`` (one row every ``log_every`` steps), ``metrics.json``, ``per_class.csv``
(the last evaluation's accuracy of each class), TensorBoard
scalars (when the tensorboard package is installed), ``curves.png`` and ``confusion.png``
(when matplotlib is), and the lines it prints.

The checkpoint's history is the record: ``log.csv`` is written whole from it at every epoch
(and at a resume), so a run restarted after it wrote an epoch's row but before its
checkpoint never shows that epoch twice; ``steps.csv`` drops the rows past the step a run
resumes from."""
from __future__ import annotations

import csv
import io
import os
from typing import Any, Dict, List, Optional

import numpy as np

from .._cli_common import plural
from .._io import write_atomic, write_json_atomic

# Beyond this many classes the confusion matrix is drawn unlabelled, beside its most
# confused pairs (a labelled 400-class matrix would be ~24,000 pixels a side).
LABELLED_CLASSES = 30
MAX_FIGURE_INCHES = 18  # at 110 dpi: under 2,000 pixels a side
DPI = 110


def write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    """`rows` as a CSV file (columns: every key, in order of appearance), atomically."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda f: f.write(text.getvalue()), binary=False, suffix=".csv")


def shows_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer it is always 1."""
    return num_classes > 5


def evaluated(row: Dict[str, Any]) -> bool:
    """Whether the epoch of `row` was evaluated (--eval-every)."""
    return "val_top1" in row


def epoch_line(row: Dict[str, Any], num_classes: int) -> str:
    line = f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.3f} | "
    if evaluated(row):
        top5 = f"top-5 {row['val_top5']:.3f} " if shows_top5(num_classes) else ""
        video5 = f"top-5 {row['val_video_top5']:.3f} " if shows_top5(num_classes) and "val_video_top5" in row else ""
        mean_class = f"mean class {row['val_mean_class_acc']:.3f} " if "val_mean_class_acc" in row else ""
        line += (f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.3f} {top5}"
                 f"video top-1 {row['val_video_top1']:.3f} {video5}{mean_class}| ")
    else:
        line += "not evaluated (--eval-every) | "
    return line + f"{plural(row['skipped_videos'], 'video')} skipped"


def step_line(row: Dict[str, Any]) -> Dict[str, str]:
    """The progress bar's fields of a steps.csv row."""
    out = {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.2e}", "clips/s": f"{row['clips_per_s']:.1f}",
           "data wait": f"{row['data_wait']:.0%}"}
    if "peak_mem_gb" in row:
        out["mem"] = f"{row['peak_mem_gb']:.1f}G"
    return out


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
    val = [h for h in history if evaluated(h)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot([h["epoch"] for h in val], [h["val_loss"] for h in val], "o-", label="val")
    a.set_xlabel("epoch"); a.set_ylabel("cross-entropy"); a.legend(); a.set_title("loss")
    b.plot(epochs, [h["train_top1"] for h in history], "o-", label="train clip top-1")
    for key, label in (("val_top1", "val clip top-1"), ("val_top5", "val clip top-5"),
                       ("val_video_top1", "val video top-1"), ("val_mean_class_acc", "val mean class acc.")):
        if key == "val_top5" and not shows_top5(num_classes):
            continue
        points = [h for h in val if key in h]
        if points:
            b.plot([h["epoch"] for h in points], [h[key] for h in points], "o-", label=label)
    b.set_ylim(0, 1.02); b.set_xlabel("epoch"); b.set_ylabel("accuracy"); b.legend(fontsize=8)
    b.set_title("accuracy")
    fig.tight_layout(); fig.savefig(path, dpi=DPI); plt.close(fig)
    return True


def per_class(confusion: List[List[int]], classes: List[str]) -> List[Dict[str, Any]]:
    """Per class: its videos, those classified right, and their share (None: no video)."""
    m = np.asarray(confusion)
    out = []
    for i, name in enumerate(classes):
        videos = int(m[i].sum())
        out.append({"class": name, "videos": videos, "correct": int(m[i, i]),
                    "accuracy": m[i, i] / videos if videos else None})
    return out


def worst_classes(rows: List[Dict[str, Any]], k: int = 5) -> str:
    """The `k` classes with the lowest accuracy, for a printed line."""
    scored = sorted((r for r in rows if r["accuracy"] is not None), key=lambda r: (r["accuracy"], r["class"]))
    return ", ".join(f"{r['class']} {r['accuracy']:.2f} ({r['correct']}/{r['videos']})" for r in scored[:k])


def most_confused(confusion: np.ndarray, classes: List[str], k: int = 20) -> List[Dict[str, Any]]:
    """The `k` largest off-diagonal cells: (true, predicted, videos), largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [{"true": classes[t], "predicted": classes[p], "videos": int(off[t, p])} for t, p in pairs if off[t, p]]


def plot_confusion(confusion: List[List[int]], classes: List[str], path: str) -> bool:
    """The video-level confusion matrix: labelled, with counts, up to LABELLED_CLASSES
    classes; beyond, an unlabelled heatmap of the row-normalised matrix beside the most
    confused pairs. Never more than MAX_FIGURE_INCHES * DPI pixels a side."""
    plt = _pyplot()
    if plt is None:
        return False
    m = np.asarray(confusion)
    n = len(classes)
    if n <= LABELLED_CLASSES:
        side = min(MAX_FIGURE_INCHES, 1.2 + 0.55 * n)
        fig, ax = plt.subplots(figsize=(side, min(MAX_FIGURE_INCHES, 1 + 0.5 * n)))
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title("validation videos")
    else:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1, 1.1]})
        rows = m / np.maximum(m.sum(1, keepdims=True), 1)
        image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's videos")
        ax.set_xlabel(f"predicted class (0-{n - 1}, classes in metrics.json)"); ax.set_ylabel("true class")
        ax.set_title(f"validation videos, {n} classes")
        pairs = most_confused(m, classes)
        names = [f"{p['true'][:24]} -> {p['predicted'][:24]}" for p in pairs][::-1]
        bx.barh(range(len(names)), [p["videos"] for p in pairs][::-1], color="tab:red")
        bx.set_yticks(range(len(names)), names, fontsize=8)
        bx.set_xlabel("videos"); bx.set_title("most confused pairs (true -> predicted)")
    fig.tight_layout(); fig.savefig(path, dpi=DPI); plt.close(fig)
    return True


class TensorBoard:
    """TensorBoard scalars when the tensorboard package is installed; nothing otherwise."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(folder)
        except (ImportError, ModuleNotFoundError):
            self.writer = None

    def log(self, row: Dict[str, Any], step: int, prefix: str = ""):
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.writer.add_scalar(prefix + k, v, step)
            self.writer.flush()


class RunReports:
    """Rank 0's reports of a run folder: the epoch reports (each file whole: log.csv and
    metrics.json rewritten from the history, the PNGs replaced) and the step log."""

    def __init__(self, folder: str, classes: List[str]):
        self.folder, self.classes = folder, classes
        self.tensorboard = TensorBoard(os.path.join(folder, "tensorboard"))
        self.steps_path = os.path.join(folder, "steps.csv")

    def epoch(self, history: List[Dict[str, Any]], confusion: Optional[List[List[int]]]) -> Dict[str, Any]:
        """Writes the reports of the history's last epoch; returns the metrics.json document."""
        row = history[-1]
        write_csv(os.path.join(self.folder, "log.csv"), history)
        self.tensorboard.log(row, row["step"])
        result = {**row, "classes": self.classes, "history": history}
        if confusion is not None:
            result["confusion"] = confusion
            result["most_confused"] = most_confused(np.asarray(confusion), self.classes)
            result["per_class"] = per_class(confusion, self.classes)
            write_csv(os.path.join(self.folder, "per_class.csv"), result["per_class"])
        write_json_atomic(os.path.join(self.folder, "metrics.json"), result)
        plot_curves(history, os.path.join(self.folder, "curves.png"), len(self.classes))
        if confusion is not None:
            plot_confusion(confusion, self.classes, os.path.join(self.folder, "confusion.png"))
        return result

    def resume(self, history: List[Dict[str, Any]], confusion: Optional[List[List[int]]], step: int) -> None:
        """At a resume: the reports of the checkpoint's history (rows written after it by
        the run that stopped are dropped), and the step log up to `step`."""
        if history:
            self.epoch(history, confusion)
        if os.path.exists(self.steps_path):
            with open(self.steps_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            write_csv(self.steps_path, rows)

    def step(self, row: Dict[str, Any]) -> None:
        """Appends a steps.csv row (and TensorBoard scalars under train/)."""
        new = not os.path.exists(self.steps_path)
        with open(self.steps_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.tensorboard.log({k: v for k, v in row.items() if k != "epoch"}, row["step"], prefix="train/")
