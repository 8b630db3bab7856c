"""Named preprocessing presets: the input settings a set of published weights was trained
with, so that evaluating, predicting with or fine-tuning from them feeds the network what
it expects.

``kinetics-torchvision``: torchvision's ``r2plus1d_18`` Kinetics-400 weights
(``R2Plus1D_18_Weights.KINETICS400_V1``) were trained by torchvision's video reference
(references/video_classification) on 16-frame clips of videos resampled to 15 fps, frames
resized to exactly 128x171 (height x width, not keeping the aspect ratio) and cropped to
112x112, 5 clips per video and epoch, the Kinetics mean/std; their published accuracy
(67.46% top-1, 86.18% top-5) is video-level over 5 clips per video."""
from __future__ import annotations

from typing import Any, Dict

PRESETS: Dict[str, Dict[str, Any]] = {
    "kinetics-torchvision": {"clip_len": 16, "frame_stride": 1, "fps": 15.0, "resize": (128, 171),
                             "short_side": 128, "crop_size": 112, "clips_per_video": 5, "eval_clips": 5},
}


def preset(name: str) -> Dict[str, Any]:
    """The settings of preset `name` (a key of PRESETS), a copy."""
    if name not in PRESETS:
        raise ValueError(f"expected a preset in {sorted(PRESETS)}, got {name!r}")
    return dict(PRESETS[name])
