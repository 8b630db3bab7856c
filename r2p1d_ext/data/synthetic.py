"""The built-in demo dataset: small real video files of moving shapes whose class is decided
only by the motion (direction, speed, rotation). Shape, colour, size, start position and
the textured background are random and independent of the class, and every frame carries
noise, so a single frame cannot tell the class: a temporal model is needed.

    make_synthetic("data/synthetic")   # root/{train,val}/{class}/{i:04d}.mp4, a few seconds
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

# class -> (direction of travel in degrees or None, speed in pixels/frame as a fraction of
# the frame width, rotation in degrees/frame; "rotate" turns either way, at random)
MOTIONS: Dict[str, Tuple[Optional[float], float, float]] = {
    "left_slow": (180.0, 0.015, 0.0),
    "left_fast": (180.0, 0.045, 0.0),
    "right_slow": (0.0, 0.015, 0.0),
    "right_fast": (0.0, 0.045, 0.0),
    "up": (270.0, 0.03, 0.0),
    "down": (90.0, 0.03, 0.0),
    "rotate": (None, 0.0, 24.0),
    "rotate_cw": (None, 0.0, 24.0),
    "rotate_ccw": (None, 0.0, -24.0),
}
# The default set: translation direction and speed, and rotation in place. Telling the
# two rotation directions apart (rotate_cw vs rotate_ccw) needs a spatial arrangement of
# opposite local motions that a small net does not learn from a few hundred clips in the
# demo's budget (measured: chance level between the two after 12 epochs), so the default
# set has one rotation class.
DEFAULT_CLASSES = ("left_slow", "left_fast", "right_slow", "right_fast", "up", "down", "rotate")

COMPLETE = ".complete"  # written last: the set is whole

_SHAPES = {  # unit polygons, none of them rotation-symmetric at the rotation speeds used
    "triangle": [(0, -1), (0.87, 0.5), (-0.87, 0.5)],
    "arrowhead": [(0, -1), (0.8, 0.9), (0, 0.4), (-0.8, 0.9)],
    "ell": [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
    "kite": [(0, -1), (0.5, 0), (0, 1), (-0.5, 0.1)],
}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus random stripes: texture that carries no class information."""
    coarse = rng.integers(70, 170, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    bg = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    bg += (stripes * rng.uniform(4, 14))[..., None]
    return np.clip(bg, 0, 255)


def render_video(rng: np.random.Generator, motion: str, frames: int, size: Tuple[int, int]) -> np.ndarray:
    """(frames, H, W, 3) uint8 BGR frames of one video of class ``motion``."""
    h, w = size
    direction, speed, spin = MOTIONS[motion]
    if motion == "rotate":
        spin *= rng.choice([-1.0, 1.0])
    bg = _background(rng, h, w)
    poly = np.array(_SHAPES[rng.choice(list(_SHAPES))], dtype=np.float32)
    radius = rng.uniform(0.18, 0.26) * min(h, w)
    # Dark or bright against the mid-grey texture, so the shape stands out in every frame.
    color = tuple(int(c) for c in (rng.integers(0, 50, size=3) if rng.random() < 0.5
                                   else rng.integers(205, 256, size=3)))
    step = speed * w * rng.uniform(0.85, 1.15)
    if direction is None:
        velocity = np.zeros(2)
    else:
        velocity = step * np.array([math.cos(math.radians(direction)), math.sin(math.radians(direction))])
    # Start where the whole path stays inside the frame.
    travel = velocity * (frames - 1)
    lo = np.array([radius, radius]) - np.minimum(travel, 0)
    hi = np.array([w - radius, h - radius]) - np.maximum(travel, 0)
    start = rng.uniform(lo, np.maximum(hi, lo + 1))
    angle0 = rng.uniform(0, 360)
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    for f in range(frames):
        theta = math.radians(angle0 + spin * f)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = (poly @ rot.T) * radius + start + velocity * f
        frame = bg.copy()
        cv2.fillPoly(frame, [np.round(pts).astype(np.int32)], color, lineType=cv2.LINE_AA)
        frame += rng.normal(0, 5, size=frame.shape).astype(np.float32)
        out[f] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_video(path: str, frames: np.ndarray, fps: int = 25) -> None:
    h, w = frames.shape[1:3]
    tmp = path + ".part.mp4"
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video to {tmp}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)  # a video is either whole or absent


def make_synthetic(root: str, videos_per_class: Tuple[int, int] = (40, 12),
                   classes: Optional[Sequence[str]] = None, frames: int = 16,
                   size: Tuple[int, int] = (72, 96), fps: int = 25, seed: int = 0,
                   progress: bool = True) -> Dict[str, int]:
    """Write ``root/{train,val}/{class}/{i:04d}.mp4``; returns the number of videos per split.
    ``videos_per_class`` is (train, val); ``size`` is (height, width)."""
    classes = list(classes) if classes is not None else list(DEFAULT_CLASSES)
    unknown = [c for c in classes if c not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; expected some of {list(MOTIONS)}")
    if frames < 2:
        raise ValueError(f"expected at least 2 frames per video, got {frames}")
    rng = np.random.default_rng(seed)
    jobs = [(split, c, i) for split, n in zip(("train", "val"), videos_per_class)
            for c in classes for i in range(n)]
    counts = {"train": 0, "val": 0}
    for split, cls, i in tqdm(jobs, desc=f"synthetic videos -> {root}", disable=not progress, unit="video"):
        folder = os.path.join(root, split, cls)
        os.makedirs(folder, exist_ok=True)
        write_video(os.path.join(folder, f"{i:04d}.mp4"), render_video(rng, cls, frames, size), fps)
        counts[split] += 1
    with open(os.path.join(root, COMPLETE), "w") as f:  # lets `make demo` reuse a finished set
        f.write(f"{counts}\n")
    return counts
