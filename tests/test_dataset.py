"""VideoDataset and the synthetic video generator: layout, decoding, sampling, edge cases."""
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from r2p1d_ext.data import dataset as ds
from r2p1d_ext.data import video
from r2p1d_ext.ops import normalize_clips
from r2p1d_ext.data.synthetic import MOTIONS, make_synthetic, render_video


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    counts = make_synthetic(root, videos_per_class=(3, 2), classes=["left_fast", "right_fast", "rotate_cw"],
                            frames=12, size=(40, 52), progress=False)
    assert counts == {"train": 9, "val": 6}
    return root


def _write(path, frames, color=True):
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h), isColor=color)
    for f in frames:
        writer.write(f)
    writer.release()


def test_layout_classes_and_shapes(synthetic_root):
    d = ds.VideoDataset(synthetic_root, "train", clip_len=8, short_side=48, crop_size=40, seed=0)
    assert d.classes == ["left_fast", "right_fast", "rotate_cw"]
    assert len(d) == 9 and d.train
    clip, label, vid, failed = d[4]
    assert failed == -1
    assert clip.shape == (8, 40, 40, 3) and clip.dtype == torch.uint8  # as torchvision's video datasets
    assert label == d.videos[vid][1] == 1
    x = normalize_clips(clip, d.mean, d.std)  # what the network takes
    assert x.shape == (3, 8, 40, 40) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 2 and 0.2 < x.std().item() < 3


def test_augmentation_is_seeded_by_epoch(synthetic_root):
    d = ds.VideoDataset(synthetic_root, "train", clip_len=4, short_side=48, crop_size=32, seed=3)
    a, b = d[0][0], d[0][0]
    assert torch.equal(a, b)
    d.set_epoch(1)
    assert not torch.equal(a, d[0][0])


def test_clip_frames_are_the_requested_frames(tmp_path):
    frames = np.stack([np.full((32, 32, 3), 8 * i, np.uint8) for i in range(20)])  # frame i has value 8i
    path = str(tmp_path / "ramp.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    for f in frames:
        writer.write(f)
    writer.release()
    got = video.read_frames(path, start=5, count=4, stride=3, total=20)
    assert [round(float(f.mean()) / 8) for f in got] == [5, 8, 11, 14]
    looped = video.read_frames(path, start=15, count=4, stride=3, total=20)  # 15, 18, 21->1, 24->4
    assert [round(float(f.mean()) / 8) for f in looped] == [15, 18, 1, 4]


def test_short_video_is_looped(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        _write(str(root / "train" / cls / "v.mp4"), render_video(np.random.default_rng(1), "up", 3, (32, 32)))
    _write(str(root / "train" / "b" / "long.mp4"), render_video(np.random.default_rng(2), "up", 12, (32, 32)))
    # Said once, with how many: a clip longer than most videos trains on loops, silently otherwise.
    with pytest.warns(RuntimeWarning, match=r"^2 of 3 train videos are shorter than a clip of 8 frames "
                                            r"\(clip_len 8, frame_stride 1\): their frames are looped") as seen:
        d = ds.VideoDataset(str(root), "train", clip_len=8, short_side=32, crop_size=32, seed=0)
    assert len(seen) == 1 and d.short_videos == 2
    clip = d[0][0]
    assert clip.shape[0] == 8
    assert torch.equal(clip[0], clip[3])  # frame 0 again after 3 frames


def test_corrupt_and_empty_files_are_skipped_with_a_warning(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    _write(str(root / "train" / "a" / "good.mp4"), render_video(np.random.default_rng(0), "up", 8, (32, 32)))
    _write(str(root / "train" / "b" / "good.mp4"), render_video(np.random.default_rng(1), "down", 8, (32, 32)))
    (root / "train" / "b" / "corrupt.mp4").write_bytes(os.urandom(2000))
    (root / "train" / "b" / "empty.avi").write_bytes(b"")
    with pytest.warns(RuntimeWarning) as record:
        d = ds.VideoDataset(str(root), "train", clip_len=4, short_side=32, crop_size=32)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and "corrupt.mp4" in messages[0] and "empty.avi" in messages[1]
    assert d.num_skipped == 2 and len(d) == 2
    loader = torch.utils.data.DataLoader(d, batch_size=2, num_workers=2)
    clips, labels, _, failed = next(iter(loader))
    assert clips.shape == (2, 4, 32, 32, 3) and sorted(labels.tolist()) == [0, 1]
    assert failed.tolist() == [-1, -1]


def test_a_video_that_fails_to_decode_later(tmp_path, monkeypatch):
    """Never another video's clip: a zero clip under the failed video's own id and label,
    flagged, and one warning per video."""
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / "val" / cls).mkdir(parents=True)
        _write(str(root / "val" / cls / "v.mp4"), render_video(np.random.default_rng(0), "up", 6, (32, 32)))
    real = video.read_frames_at

    def flaky(path, *args):
        if path.endswith(os.path.join("a", "v.mp4")):
            raise video.VideoDecodeError(f"truncated stream in {path}")
        return real(path, *args)

    monkeypatch.setattr(ds, "read_frames_at", flaky)
    for train in (True, False):
        d = ds.VideoDataset(str(root), "val", clip_len=4, short_side=32, crop_size=32, train=train)
        with pytest.warns(RuntimeWarning, match="truncated stream"):
            clip, label, vid, failed = d[0]
        assert (vid, label, failed) == (0, 0, 0) and not clip.any() and d.num_skipped == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning per video, not per access
            assert d[0][3] == 0
        assert d[1][3] == -1


def test_grayscale_and_odd_sizes(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "gray").mkdir(parents=True)
    gray = np.random.default_rng(0).integers(0, 255, (10, 37, 51), dtype=np.uint8)
    _write(str(root / "train" / "gray" / "g.mp4"), gray, color=False)
    d = ds.VideoDataset(str(root), "train", clip_len=6, short_side=40, crop_size=33, seed=1)
    clip = d[0][0]
    assert clip.shape == (6, 33, 33, 3)


def test_empty_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a folder .*train holding one sub-folder per class"):
        ds.VideoDataset(str(tmp_path), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        ds.VideoDataset(str(tmp_path), "train")
    # The split folder given as the root (--data DIR/train): the message names the root to use.
    with pytest.raises(FileNotFoundError, match=r"looks like a split itself: the dataset root is the folder "
                                                r"that holds train/ and val/, i\.e\. " + str(tmp_path)):
        ds.VideoDataset(str(tmp_path / "train"), "train")
    (tmp_path / "train" / "a").mkdir()
    with pytest.raises(ValueError, match="class folder .*a holds no video files"):
        ds.VideoDataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="crop_size <= short_side"):
        ds.VideoDataset(str(tmp_path), "train", short_side=64, crop_size=112)


def test_multi_clip_evaluation(synthetic_root):
    d = ds.VideoDataset(synthetic_root, "val", clip_len=4, short_side=48, crop_size=40, clips_per_video=3)
    assert len(d) == 3 * 6 and not d.train
    assert [d.clip_start(12, k, None) for k in range(3)] == [0, 4, 8]
    assert torch.equal(d[0][0], d[0][0])  # evaluation is deterministic
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [2.0, 0.0]])
    vs, vl = ds.video_scores(scores, torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 1, 0]))
    assert torch.allclose(vs, torch.tensor([[1 / 3, 4 / 3], [2.0, 0.0]])) and vl.tolist() == [1, 0]


def test_synthetic_classes_differ_only_in_motion():
    rng = np.random.default_rng(0)
    for motion in MOTIONS:
        v = render_video(rng, motion, 8, (48, 64))
        assert v.shape == (8, 48, 64, 3) and v.dtype == np.uint8
        assert np.abs(v[0].astype(int) - v[-1].astype(int)).mean() > 1  # it moves
    with pytest.raises(ValueError, match="unknown synthetic classes"):
        make_synthetic("/nonexistent", classes=["sideways"], progress=False)


def test_a_damaged_video_prints_one_line_not_decoder_output(tmp_path):
    """A video whose middle is zeroed, in a dataset read by a DataLoader worker: stderr holds
    one line, ours, skipping it (no line of torch's code with it), and none of FFmpeg's (it
    logs why it cannot read the file; a file it can open but not decode makes it log every
    damaged macroblock, thousands of lines, which the same default silences)."""
    root = tmp_path / "data"
    (root / "train" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("good", "bad"):
        _write(str(root / "train" / "a" / f"{name}.mp4"), rng.integers(0, 255, (60, 48, 64, 3), dtype=np.uint8))
    bad = root / "train" / "a" / "bad.mp4"
    data = bytearray(bad.read_bytes())
    data[len(data) // 4: 3 * len(data) // 4] = bytes(len(data) // 2)
    bad.write_bytes(data)
    code = "\n".join([
        "import sys, torch",
        "from r2p1d_ext.data.dataset import VideoDataset",
        f"d = VideoDataset({str(root)!r}, 'train', clip_len=40, short_side=48, crop_size=40, seed=0)",
        "loader = torch.utils.data.DataLoader(d, batch_size=1, num_workers=1)",
        "print('failed', sorted(int(b[3]) for b in loader))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, "\n".join(lines[:20])
    assert "skipping video" in lines[0] and "bad.mp4" in lines[0] and "torch" not in lines[0], lines[0]
