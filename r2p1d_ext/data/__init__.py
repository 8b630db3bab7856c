"""Video data: the dataset (``root/{split}/{class}/{video}``, or the videos a dataset's split
files list: r2p1d_ext/data/annotations.py; decoded with PyAV), the one-time preparation of
a real video folder (``r2p1d prepare``) and its manifest, and the built-in synthetic motion
set of the demo. Needs the ``[train]`` extra (PyAV, OpenCV, NumPy, tqdm); the kernel
library and the models do not import this package."""
from .._extras import TRAIN, require

require("r2p1d_ext.data", "train", TRAIN)

from .annotations import Listing, read_annotations  # noqa: E402
from .dataset import KINETICS_MEAN, KINETICS_STD, VideoDataset, count_failed, video_scores  # noqa: E402
from .synthetic import DEFAULT_CLASSES, MOTIONS, make_synthetic  # noqa: E402
from .video import VIDEO_EXTENSIONS, VideoDecodeError, probe_frame_count, read_frames  # noqa: E402

__all__ = ["VideoDataset", "read_annotations", "Listing", "count_failed", "video_scores", "KINETICS_MEAN", "KINETICS_STD",
           "make_synthetic", "MOTIONS", "DEFAULT_CLASSES", "VIDEO_EXTENSIONS", "VideoDecodeError",
           "probe_frame_count", "read_frames"]
