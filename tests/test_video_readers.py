"""The video readers (r2p1d_ext/data/video.py): the frame at each index is that frame, at
random starts, on prepared and raw files of several codecs, with both readers; the decoded
frames a clip costs; the fallbacks (no seek, no PyAV); and the dataset's uint8 items, which
normalize to the float clips of the former worker-side transform to the bit."""
import os

import av
import cv2
import numpy as np
import pytest
import torch

from r2p1d_ext.data import dataset as ds
from r2p1d_ext.data import prepare as prep
from r2p1d_ext.data import video
from r2p1d_ext.ops import KINETICS_MEAN, KINETICS_STD, normalize_clips

FRAMES, H, W = 70, 64, 96


def numbered(n=FRAMES, h=H, w=W, seed=0):
    """(n, h, w, 3) uint8 RGB frames, frame k showing k in binary: 8 blocks of 16x12 pixels
    (dark 0, light 1) on a moving textured background, so that codecs have motion to code."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(40, 200, (8, 12, 3), dtype=np.uint8), (w + 2 * n, h))
    frames = np.stack([texture[:, 2 * k:2 * k + w] for k in range(n)])
    for k in range(n):
        for b in range(8):
            frames[k, 8:24, 12 * b:12 * b + 12] = 235 if k >> b & 1 else 16
    return frames


def number_of(frame):
    return sum(1 << b for b in range(8) if frame[8:24, 12 * b + 2:12 * b + 10].mean() > 125)


def write_pyav(path, frames, codec="libx264", options=None, fps=25):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = options or {}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))


def write_opencv(path, frames, fourcc):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (frames.shape[2], frames.shape[1]))
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


# Raw files as users have them: web H.264 (one keyframe, B-frames), H.264 with B-frames and
# short GOPs (seeks land before reordered frames), OpenCV's MPEG-4 Part 2 and MJPEG, MPEG-2 in
# a program stream (.mpg: seeks by byte position).
RAW = {
    "web.mp4": lambda p, f: write_pyav(p, f, options={"preset": "veryfast"}),
    "bframes.mp4": lambda p, f: write_pyav(p, f, options={"g": "10", "bf": "3", "preset": "veryfast"}),
    "mp4v.mp4": lambda p, f: write_opencv(p, f, "mp4v"),
    "mjpg.avi": lambda p, f: write_opencv(p, f, "MJPG"),
    "mpeg2.mpg": lambda p, f: write_pyav(p, f, codec="mpeg2video", options={"g": "12", "bf": "2"}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path: every RAW kind, and "prepared.mp4" (r2p1d prepare of web.mp4, keyframe
    interval 16, at its own short side: no resize)."""
    root = tmp_path_factory.mktemp("readers")
    frames = numbered()
    out = {}
    for name, write in RAW.items():
        (root / "src" / "train" / "a").mkdir(parents=True, exist_ok=True)
        path = root / "src" / "train" / "a" / name
        write(path, frames)
        out[name] = str(path)
    src = root / "web"
    (src / "train" / "a").mkdir(parents=True)
    os.link(out["web.mp4"], src / "train" / "a" / "web.mp4")
    prep.prepare(str(src), str(root / "prepared"), short_side=H, workers=0, progress=False)
    out["prepared.mp4"] = str(root / "prepared" / "train" / "a" / "web.mp4")
    return out


def test_numbers_survive_the_codecs(files):
    for name, path in files.items():
        every = video.read_frames(path, 0, FRAMES, 1, FRAMES, reader="opencv")
        assert [number_of(f) for f in every] == list(range(FRAMES)), name


@pytest.mark.parametrize("reader", ["pyav", "opencv"])
@pytest.mark.parametrize("name", list(RAW) + ["prepared.mp4"])
def test_every_frame_index_is_exact_at_random_starts(files, name, reader):
    if (name, reader) == ("mpeg2.mpg", "opencv"):
        pytest.skip("OpenCV's frame seek in an MPEG program stream lands a few frames early (measured "
                    "here: frame 61 for 64); the PyAV reader, the default, is exact on it")
    rng = np.random.default_rng(len(name))
    for _ in range(12):
        start, stride, count = int(rng.integers(0, FRAMES)), int(rng.integers(1, 4)), int(rng.integers(1, 17))
        got = video.read_frames(files[name], start, count, stride, FRAMES, reader=reader)
        assert [number_of(f) for f in got] == video.clip_indices(start, count, stride, FRAMES), \
            (name, reader, start, stride, count)


def test_a_prepared_clip_decodes_at_most_clip_length_plus_interval_minus_one(files):
    stats = video.DecodeStats()
    for start in range(0, FRAMES - 16 + 1):
        before = stats.decoded
        video.read_frames(files["prepared.mp4"], start, 16, 1, FRAMES, reader="pyav", stats=stats)
        assert stats.decoded - before == 16 + start % 16 <= 16 + 16 - 1, start
    assert stats.forward == 0 and stats.clips == FRAMES - 16 + 1
    # The raw web file has one keyframe: a clip decodes every frame up to its end.
    stats = video.DecodeStats()
    video.read_frames(files["web.mp4"], 40, 16, 1, FRAMES, reader="pyav", stats=stats)
    assert stats.decoded >= 56


def test_region_converts_only_the_box(files):
    """A box at odd and even edges equals the same box cut from the whole frames."""
    whole = video.read_frames(files["prepared.mp4"], 20, 8, 1, FRAMES, reader="pyav")
    for box in ((0, 0, 64, 96), (3, 5, 41, 33), (10, 31, 54, 65), (1, 1, 1, 1)):
        for reader in ("pyav", "opencv"):
            asked = []
            got = video.read_frames(files["prepared.mp4"], 20, 8, 1, FRAMES, reader=reader,
                                    region=lambda h, w: asked.append((h, w)) or box)
            t, l, bh, bw = box
            assert asked == [(H, W)] and got.shape == (8, bh, bw, 3)
            if reader == "pyav":
                assert np.array_equal(got, whole[:, t:t + bh, l:l + bw]), box


def test_a_file_without_timestamps_is_read_forward(files, tmp_path):
    """An H.264 elementary stream carries no timestamps: the reader cannot place a seek, so
    it decodes from the start, and says so in its counters."""
    path = tmp_path / "v.h264"
    write_pyav(path, numbered(30), options={"g": "8", "bf": "0"})
    stats = video.DecodeStats()
    got = video.read_frames(str(path), 12, 6, 2, 30, reader="pyav", stats=stats)
    assert [number_of(f) for f in got] == [12, 14, 16, 18, 20, 22]
    assert stats.decoded >= 23


def test_files_pyav_cannot_open(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4000))
    with pytest.raises(video.VideoDecodeError, match="cannot open .*junk.mp4 with PyAV"):
        video.read_frames(str(junk), 0, 4, 1, 10, reader="pyav")
    with pytest.raises(video.VideoDecodeError, match="junk.mp4"):  # auto: OpenCV is tried, and fails too
        video.read_frames(str(junk), 0, 4, 1, 10)
    with pytest.raises(ValueError, match="expected reader to be one of"):
        video.read_frames(str(junk), 0, 4, 1, 10, reader="ffmpeg")


def test_a_truncated_file_gives_the_frames_that_decode(files, tmp_path):
    path = tmp_path / "cut.mp4"
    data = open(files["bframes.mp4"], "rb").read()
    path.write_bytes(data[: len(data) // 2])
    for reader in ("pyav", "opencv"):
        try:
            got = video.read_frames(str(path), 0, 8, 1, FRAMES, reader=reader)
        except video.VideoDecodeError:
            continue  # nothing decodes: the dataset skips the video
        assert got.shape == (8, H, W, 3)


def old_item(path, start, total, clip_len, short_side, crop, rng):
    """The former worker-side item: OpenCV read, resize, crop, flip, then float32
    normalisation in NumPy (the code this package had before items became uint8)."""
    frames = video.read_frames(path, start, clip_len, 1, total, reader="opencv")
    t, h, w, _ = frames.shape
    scale = short_side / min(h, w)
    nh, nw = max(short_side, round(h * scale)), max(short_side, round(w * scale))
    if (nh, nw) != (h, w):
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
                           for f in frames])
    top, left = int(rng.integers(0, nh - crop + 1)), int(rng.integers(0, nw - crop + 1))
    clip = frames[:, top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    mean = np.asarray(KINETICS_MEAN, dtype=np.float32) * 255
    std = np.asarray(KINETICS_STD, dtype=np.float32) * 255
    clip = (clip.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


@pytest.mark.parametrize("short_side", [H, 48])  # no resize (the crop converted alone), and a resize
def test_items_normalize_to_the_former_float_clips_bitwise(files, short_side):
    root = os.path.dirname(os.path.dirname(os.path.dirname(files["mp4v.mp4"])))
    d = ds.VideoDataset(root, "train", clip_len=8, short_side=short_side, crop_size=40, seed=5, reader="opencv")
    for index in range(len(d)):
        path, _, frames = d.videos[index]
        clip = d[index][0]
        rng = np.random.default_rng((5, 0, index))
        start = int(rng.integers(0, max(0, frames - 8) + 1))
        want = old_item(path, start, frames, 8, short_side, 40, rng)
        assert clip.dtype == torch.uint8 and torch.equal(normalize_clips(clip, d.mean, d.std), want), path
        assert torch.equal(normalize_clips(clip[None], d.mean, d.std)[0], want)


def test_a_forked_worker_converts_after_its_parent(tmp_path):
    """libswscale's conversion (odd sizes take it) in the parent, then in a forked DataLoader
    worker: with swscale's default thread pool the worker waited forever for threads it did
    not inherit. In a fresh process with a time limit, so a hang fails."""
    import subprocess
    import sys
    path = tmp_path / "odd.mp4"
    write_opencv(path, numbered(12, 33, 45), "mp4v")
    code = "\n".join([
        "import torch",
        "from r2p1d_ext.data import video",
        f"video.read_frames({str(path)!r}, 0, 4, 1, 12)",
        "class D(torch.utils.data.Dataset):",
        "    def __len__(self): return 4",
        f"    def __getitem__(self, i): return torch.from_numpy(video.read_frames({str(path)!r}, i, 4, 1, 12))",
        "loader = torch.utils.data.DataLoader(D(), batch_size=2, num_workers=1,",
        "                                     multiprocessing_context='fork')",
        "print(sum(len(b) for b in loader))"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "4", done.stderr[-2000:]
