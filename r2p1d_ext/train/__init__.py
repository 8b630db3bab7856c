"""The training application: ``train(TrainConfig(...))`` (the loop, checkpoints, DDP),
evaluation of a model or a checkpoint, the run folder's reports, and the ``r2p1d`` command
(r2p1d_ext/train/cli.py). Needs the ``[train]`` extra (OpenCV, NumPy, tqdm; matplotlib for
the charts)."""
from .._extras import TRAIN, require

require("r2p1d_ext.train", "train", TRAIN)

from .config import TrainConfig, resolve_device  # noqa: E402
from .evaluation import evaluate, evaluate_checkpoint, evaluate_model, topk_correct  # noqa: E402
from .loop import train  # noqa: E402

__all__ = ["TrainConfig", "train", "evaluate", "evaluate_checkpoint", "evaluate_model", "topk_correct",
           "resolve_device"]
