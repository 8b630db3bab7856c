"""``r2p1d prepare``: mirrored layout, sizes, frame counts and rates, cheap exact seeks,
resumability (an interrupted write, a kill -9 in the middle, re-runs), unreadable inputs,
and the manifest as VideoDataset reads it."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import cv2
import numpy as np
import pytest
import torch

from r2p1d_ext.data import dataset as ds
from r2p1d_ext.data import video
from r2p1d_ext.data import manifest
from r2p1d_ext.data import prepare as prep
from r2p1d_ext.cli import main as cli
from r2p1d_ext.data.synthetic import render_video, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mp4(path, frames=20, size=(48, 80), fps=25, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_video(str(path), render_video(np.random.default_rng(seed), "up", frames, size), fps)


def _avi(path, frames, size=(60, 60), keep=1.0, seed=0):
    """An MJPG .avi (as UCF101's are AVIs); with keep < 1 cut short (its header still
    promises every frame)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size[1], size[0]))
    for frame in render_video(np.random.default_rng(seed), "left_fast", frames, size):
        writer.write(frame)
    writer.release()
    if keep < 1:
        with open(path, "r+b") as f:
            f.truncate(int(os.path.getsize(path) * keep))


def _decode(path):
    """Every frame, read sequentially (BGR)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return np.stack(frames)


def _outputs(dst):
    """Visible files under dst, relative and '/'-separated."""
    return sorted(os.path.relpath(os.path.join(d, f), dst).replace(os.sep, "/")
                  for d, _, files in os.walk(dst) for f in files if not f.startswith("."))


# source path -> (frames, (height, width) of the source, (height, width) expected at short side 32)
LAYOUT = {"train/left/a.mp4": (20, (48, 80), (32, 54)),
          "train/left/b.avi": (15, (60, 60), (32, 32)),
          "train/right/c.mp4": (18, (80, 48), (54, 32)),  # portrait
          "val/right/d.mp4": (12, (36, 64), (32, 56))}   # enlarged


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for k, (rel, (frames, size, _)) in enumerate(LAYOUT.items()):
        if rel.endswith(".avi"):
            _avi(src / rel, frames, size, seed=k)
        else:
            _mp4(src / rel, frames, size, seed=k)
    (src / "val" / "right" / "notes.txt").write_text("not a video")
    _mp4(src / "train" / ".cache" / "x.mp4", 4, (32, 32))  # a hidden folder: left out
    return str(src)


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("dst"))
    summary = prep.prepare(source, dst, short_side=32, workers=0, progress=False)
    assert (summary["prepared"], summary["skipped"], summary["failed"]) == (len(LAYOUT), 0, [])
    return dst


def test_layout_sizes_frames_and_manifest(source, prepared):
    expected = sorted(prep.output_name(rel) for rel in LAYOUT)
    assert _outputs(prepared) == sorted(expected + [manifest.NAME])
    doc = manifest.read(manifest.path_in(prepared))
    assert doc["complete"] and doc["settings"] == {"short_side": 32, "fps": None, "codec": "h264",
                                                   "keyframe_interval": 16, "crf": 20}
    rows = manifest.rows_by_output(doc)
    for rel, (frames, size, out_size) in LAYOUT.items():
        out = os.path.join(prepared, prep.output_name(rel))
        got = _decode(out)
        assert got.shape == (frames, *out_size, 3), rel
        row = rows[prep.output_name(rel)]
        assert (row["source"], row["frames"], row["height"], row["width"], row["bytes"], row["codec"],
                row["keyframe_interval"]) == (rel, frames, *out_size, os.path.getsize(out), "h264", 16)
        assert row["fps"] == pytest.approx(25.0)
        # Frame k is source frame k, resized (H.264 at crf 20 keeps > 30 dB of these noisy frames).
        want = np.stack([cv2.resize(f, out_size[::-1], interpolation=cv2.INTER_AREA if out_size[0] < size[0]
                                    else cv2.INTER_LINEAR) for f in _decode(os.path.join(source, rel))])
        mse = ((got.astype(float) - want) ** 2).mean(axis=(1, 2, 3))
        assert 10 * np.log10(255 ** 2 / mse.max()) > 25, rel


@pytest.mark.parametrize("size, short, want", [((720, 1280), 128, (128, 228)), ((272, 640), 128, (128, 302)),
                                               ((1080, 1920), 128, (128, 228)), ((640, 360), 128, (228, 128)),
                                               ((100, 100), 64, (64, 64)), ((3, 500), 2, (2, 334))])
def test_output_size_keeps_aspect_with_even_sides(size, short, want):
    assert prep.output_size(*size, short) == want


def _keyframes(path):
    """Indices of the keyframes (the packets' key flags, nothing decoded) and the packet count."""
    import av
    with av.open(str(path)) as c:
        flags = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    return [i for i, k in enumerate(flags) if k], len(flags)


@pytest.mark.parametrize("interval", [16, 5])
def test_keyframes_are_regular_and_seeks_are_exact(tmp_path, interval):
    """Cheap seeks: a keyframe exactly every `interval` frames; a clip read after a seek is
    exactly the frames a sequential decode gives (with either reader), and decodes at most
    clip length + interval - 1 frames."""
    _mp4(tmp_path / "src" / "train" / "a" / "v.mp4", frames=60, size=(72, 96))
    prep.prepare(str(tmp_path / "src"), str(tmp_path / "dst"), short_side=48, workers=0, progress=False,
                 keyframe_interval=interval)
    out = str(tmp_path / "dst" / "train" / "a" / "v.mp4")
    assert _keyframes(out) == (list(range(0, 60, interval)), 60)
    every = {"pyav": video.read_frames(out, 0, 60, 1, 60, reader="pyav"),
             "opencv": _decode(out)[..., ::-1]}  # RGB, as read_frames returns
    for start in (0, 5, 13, 30, 47):
        for reader, frames in every.items():
            stats = video.DecodeStats()
            assert np.array_equal(video.read_frames(out, start, 8, 1, 60, reader, stats),
                                  frames[start:start + 8]), (reader, start)
            if reader == "pyav":
                assert stats.decoded == 8 + start % interval <= 8 + interval - 1 and stats.forward == 0
    # The two readers convert YUV to RGB with slightly different rounding, never more.
    assert np.abs(every["pyav"].astype(int) - every["opencv"]).max() <= 3


def test_lower_frame_rate_keeps_every_kth_frame(tmp_path):
    src = tmp_path / "src"
    _mp4(src / "train" / "a" / "v.mp4", frames=20, size=(32, 48))
    source = _decode(src / "train" / "a" / "v.mp4").astype(float)
    for fps, frames, rate in ((10, 8, 10.0), (50, 20, 25.0), (25, 20, 25.0)):
        dst = tmp_path / f"fps{fps}"
        prep.prepare(str(src), str(dst), short_side=32, fps=fps, workers=0, progress=False)
        out = dst / "train" / "a" / "v.mp4"
        got = _decode(out).astype(float)
        row = manifest.read(manifest.path_in(str(dst)))["videos"][0]
        assert got.shape[0] == row["frames"] == frames and row["fps"] == pytest.approx(rate)
        assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == pytest.approx(rate)
        # Output frame k is the source frame closest to it: floor(k * 25 / fps).
        nearest = [int(np.argmin(((source - g) ** 2).mean(axis=(1, 2, 3)))) for g in got]
        assert nearest == [int(k * 25 / max(min(fps, 25), 1)) for k in range(frames)], fps


def test_unreadable_inputs_are_skipped_with_one_warning_each(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _mp4(src / "train" / "a" / "good.mp4", frames=10, size=(32, 32))
    (src / "train" / "a" / "noise.mp4").write_bytes(os.urandom(3000))
    (src / "train" / "b").mkdir(parents=True)
    (src / "train" / "b" / "empty.avi").write_bytes(b"")
    _avi(src / "train" / "b" / "cut.avi", 40, (32, 32), keep=0.5)
    for run in range(2):  # a re-run retries the failed ones, and says so again
        with pytest.warns(RuntimeWarning) as record:
            summary = prep.prepare(str(src), str(dst), short_side=32, workers=0, progress=False)
        messages = sorted(str(w.message) for w in record)
        assert sorted(s for s, _ in summary["failed"]) == ["train/a/noise.mp4", "train/b/empty.avi"]
        assert len(messages) == 2 + (run == 0), messages
        assert all("skipping video" in m for m in messages if "cut.avi" not in m)
        # One line each: no file of ours or of the process pool to quote a source line from.
        assert {(w.filename, w.lineno) for w in record} == {("r2p1d_ext.prepare", 0)}
        assert (summary["prepared"], summary["skipped"]) == ((2, 0) if run == 0 else (0, 2))
    assert _outputs(dst) == ["manifest.json", "train/a/good.mp4", "train/b/cut.mp4"]
    doc = manifest.read(manifest.path_in(str(dst)))
    assert [f["source"] for f in doc["failed"]] == ["train/a/noise.mp4", "train/b/empty.avi"]
    cut = manifest.rows_by_output(doc)["train/b/cut.mp4"]
    assert 0 < cut["frames"] < 40 and _decode(dst / "train" / "b" / "cut.mp4").shape[0] == cut["frames"]


def test_rerun_skips_finished_videos_and_redoes_changed_sources(source, tmp_path):
    dst = str(tmp_path / "dst")
    prep.prepare(source, dst, short_side=32, workers=0, progress=False)
    stamps = {rel: os.stat(os.path.join(dst, rel)).st_mtime_ns for rel in _outputs(dst) if rel.endswith(".mp4")}
    first = manifest.read(manifest.path_in(dst))["videos"]
    summary = prep.prepare(source, dst, short_side=32, workers=0, progress=False)
    assert (summary["prepared"], summary["skipped"]) == (0, len(LAYOUT))
    assert stamps == {rel: os.stat(os.path.join(dst, rel)).st_mtime_ns for rel in stamps}
    # Without the manifest the finished files are described from themselves, alike.
    os.unlink(manifest.path_in(dst))
    prep.prepare(source, dst, short_side=32, workers=0, progress=False)
    keys = ("output", "source", "frames", "width", "height", "bytes")
    assert [{k: r[k] for k in keys} for r in manifest.read(manifest.path_in(dst))["videos"]] == \
           [{k: r[k] for k in keys} for r in first]
    # A source edited after its output was written is prepared again.
    newer = time.time() + 100
    os.utime(os.path.join(dst, "train/left/a.mp4"), (newer - 50, newer - 50))
    os.utime(os.path.join(source, "train/left/a.mp4"), (newer, newer))
    try:
        assert prep.prepare(source, dst, short_side=32, workers=0, progress=False)["prepared"] == 1
    finally:
        os.utime(os.path.join(source, "train/left/a.mp4"))


def test_interrupted_write_leaves_no_half_file_and_resumes(source, tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    real, calls = prep._Writer.write, [0]

    def write_then_interrupt(self, frame):
        calls[0] += 1
        if calls[0] == 30:  # inside the second video (the first has 20 frames)
            raise KeyboardInterrupt
        return real(self, frame)

    monkeypatch.setattr(prep._Writer, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    monkeypatch.setattr(prep._Writer, "write", real)
    # The finished video and the manifest of it; nothing of the second, not even a temporary
    # (the lock file stays: runs exclude each other by an flock on it, not by its presence).
    assert _outputs(dst) == ["manifest.json", "train/left/a.mp4"]
    assert [f for _, _, files in os.walk(dst) for f in files if f.startswith(".")] == [prep.LOCK]
    doc = manifest.read(manifest.path_in(str(dst)))
    assert not doc["complete"] and [r["output"] for r in doc["videos"]] == ["train/left/a.mp4"]
    summary = prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    assert (summary["prepared"], summary["skipped"]) == (len(LAYOUT) - 1, 1)
    assert manifest.read(manifest.path_in(str(dst)))["complete"]


def test_kill_9_in_the_middle_then_rerun(tmp_path):
    """The CLI with 2 worker processes, SIGKILLed (with its workers) while it works: every
    visible output is whole; the re-run removes the temporaries and finishes the rest."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = np.random.default_rng(0)
    count, frames = 24, 40
    for i in range(count):  # cheap to make, slow enough to prepare (~50 ms each)
        base = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480))
        os.makedirs(src / "train" / f"c{i % 3}", exist_ok=True)
        write_video(str(src / "train" / f"c{i % 3}" / f"{i:02d}.mp4"),
                    np.stack([np.roll(base, 4 * k, axis=1) for k in range(frames)]))
    cmd = [sys.executable, "-m", "r2p1d_ext.cli", "prepare", str(src), str(dst), "--short-side", "64",
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_outputs(dst)) < 3:  # manifest + 2 videos
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = [rel for rel in _outputs(dst) if rel.endswith(".mp4")]
    assert 0 < len(done) < count, "the kill came too late to test anything"
    for rel in done:  # never half a file under a real name
        assert _decode(dst / rel).shape == (frames, 64, 86, 3), rel
    summary = prep.prepare(str(src), str(dst), short_side=64, workers=0, progress=False)
    assert (summary["prepared"], summary["skipped"]) == (count - len(done), len(done))
    assert not [f for _, _, files in os.walk(dst) for f in files if f.startswith(".") and prep.PART in f]
    assert len(manifest.read(manifest.path_in(str(dst)))["videos"]) == count


def test_workers_start_in_a_process_that_used_opencv(source, tmp_path):
    """Forked workers hung in their first OpenCV call once the parent had run OpenCV's
    thread pool; spawned ones do not. In a fresh process with a time limit, so a hang fails."""
    script = "\n".join([
        "import cv2, numpy as np",
        "from r2p1d_ext.data.prepare import prepare",
        "if __name__ == '__main__':",
        "    cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (999, 777))  # starts OpenCV's pool",
        f"    s = prepare({source!r}, {str(tmp_path / 'd')!r}, short_side=32, workers=2, progress=False)",
        "    print(s['prepared'])"])
    path = tmp_path / "run.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.split()[-1] == str(len(LAYOUT)), out.stderr[-2000:]


def test_stale_temporaries_and_other_settings(source, tmp_path):
    dst = tmp_path / "dst"
    stale = dst / "train" / "left" / f".a{prep.PART}12345.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a video")
    stale_manifest = dst / ".tmp-k1ll3d.json"  # a manifest write cut short by a kill
    stale_manifest.write_text('{"format": ')
    prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    assert not stale.exists() and not stale_manifest.exists()
    with pytest.raises(ValueError, match="was prepared with .*'short_side': 32.* not .*'short_side': 64"):
        prep.prepare(source, str(dst), short_side=64, workers=0, progress=False)


def test_a_second_run_into_a_busy_folder_is_refused(source, tmp_path, capsys):
    """While one run holds DST's lock, another into DST is a clear error naming the holder,
    and it touches nothing (not the first run's temporaries, not its manifest); once the
    lock is released (the holder exits, however), a run goes ahead."""
    dst = tmp_path / "dst"
    dst.mkdir()
    busy = dst / "train" / "a" / f".v{prep.PART}999.mp4"  # the live run's work in progress
    busy.parent.mkdir(parents=True)
    busy.write_bytes(b"being written")
    with prep.exclusive(str(dst)):
        with pytest.raises(prep.FolderBusyError, match=f"another r2p1d prepare \\(process {os.getpid()}\\) is writing into"):
            prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
        assert cli(["prepare", source, str(dst), "--workers", "0"]) == 1
        assert "is writing into" in capsys.readouterr().err
        assert busy.exists() and not (dst / "manifest.json").exists()
    summary = prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    assert summary["prepared"] == len(LAYOUT) and not busy.exists()


def test_bad_arguments_are_clear_errors(source, tmp_path, capsys):
    with pytest.raises(ValueError, match="even short side >= 2.*got 31"):
        prep.prepare(source, str(tmp_path / "d"), short_side=31)
    with pytest.raises(ValueError, match="fps to be a positive number"):
        prep.prepare(source, str(tmp_path / "d"), fps=0.0)
    with pytest.raises(ValueError, match="neither inside the other"):
        prep.prepare(source, os.path.join(source, "prepared"))
    with pytest.raises(FileNotFoundError, match="expected SRC to be a folder"):
        prep.prepare(str(tmp_path / "missing"), str(tmp_path / "d"))
    clash = tmp_path / "clash"
    _mp4(clash / "train" / "a" / "v.mp4", 4, (32, 32))
    _avi(clash / "train" / "a" / "v.avi", 4, (32, 32))
    with pytest.raises(ValueError, match=r"train/a/v.mp4 from \['train/a/v.avi', 'train/a/v.mp4'\]"):
        prep.prepare(str(clash), str(tmp_path / "d"), workers=0)
    capsys.readouterr()
    assert cli(["prepare", source, str(tmp_path / "d"), "--short-side", "31"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r2p1d prepare: error: expected an even short side") and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists()  # nothing written before the checks


def test_cli_prepares_and_reports(source, tmp_path, capsys):
    assert cli(["prepare", source, str(tmp_path / "d"), "--short-side", "32", "--workers", "0",
                "--no-progress"]) == 0
    assert f"prepared {len(LAYOUT)} with libx264, already done 0, skipped 0 unreadable" in capsys.readouterr().out


# ------------------------------------------------------------------ the dataset and the manifest
def test_dataset_takes_frame_counts_from_the_manifest(prepared):
    kwargs = dict(clip_len=8, short_side=32, crop_size=32, seed=0)
    for split in ("train", "val"):
        with_m = ds.VideoDataset(prepared, split, **kwargs)
        without = ds.VideoDataset(prepared, split, manifest=None, **kwargs)
        assert with_m.probed == 0 and without.probed == len(without.videos) > 0
        assert with_m.videos == without.videos
        for i in range(len(with_m)):
            a, b = with_m[i], without[i]
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_dataset_probes_what_the_manifest_does_not_describe(source, tmp_path):
    dst = str(tmp_path / "dst")
    prep.prepare(source, dst, short_side=32, workers=0, progress=False)
    kwargs = dict(clip_len=4, short_side=32, crop_size=32)
    # A file replaced after preparation (other size), and one added: both probed.
    _mp4(os.path.join(dst, "train/left/a.mp4"), frames=7, size=(32, 54), seed=9)
    _mp4(os.path.join(dst, "train/right/new.mp4"), frames=5, size=(32, 32))
    d = ds.VideoDataset(dst, "train", **kwargs)
    assert d.probed == 2
    assert {os.path.basename(p): n for p, _, n in d.videos} == {"a.mp4": 7, "b.mp4": 15, "c.mp4": 18, "new.mp4": 5}
    # An unreadable manifest is ignored with a warning; a named one must be readable.
    with open(manifest.path_in(dst), "w") as f:
        f.write("{not json")
    with pytest.warns(RuntimeWarning, match="ignoring .*manifest.json .*not valid JSON"):
        assert ds.VideoDataset(dst, "train", **kwargs).probed == 4
    with pytest.raises(manifest.ManifestError, match="not valid JSON"):
        ds.VideoDataset(dst, "train", manifest=manifest.path_in(dst), **kwargs)
    with pytest.raises(FileNotFoundError, match="expected manifest to be 'auto', None or a manifest file"):
        ds.VideoDataset(dst, "train", manifest=os.path.join(dst, "nope.json"), **kwargs)
    with open(manifest.path_in(dst), "w") as f:
        json.dump({"format": "something-else/2", "videos": []}, f)
    with pytest.warns(RuntimeWarning, match=r"format 'r2p1d-prepare/2' \(or 'r2p1d-prepare/1'\), got 'something-else/2'"):
        ds.VideoDataset(dst, "train", **kwargs)


def test_dataset_ignores_hidden_files_and_folders(prepared, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    (root / "train" / "left" / f".b{prep.PART}1.mp4").write_bytes(b"half")
    (root / "train" / "left" / "._a.mp4").write_bytes(b"AppleDouble")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = ds.VideoDataset(str(root), "train", clip_len=4, short_side=32, crop_size=32)
    assert d.classes == ["left", "right"] and len(d.videos) == 3 and d.probed == 0


def test_a_folder_prepared_the_former_way_is_rewritten(source, tmp_path):
    """A format-1 manifest (OpenCV mp4v files, a keyframe every 12) is read; prepare
    rewrites its files as H.264 with the new keyframe pattern and says how many; the next
    run has nothing to do. Another interval rewrites again."""
    dst = tmp_path / "dst"
    prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    path = manifest.path_in(str(dst))
    doc = json.load(open(path))
    doc["format"], doc["settings"] = manifest.FORMAT_1, {"short_side": 32, "fps": None, "codec": "mp4v"}
    for row in doc["videos"]:
        for key in ("codec", "keyframe_interval", "crf"):
            del row[key]
    with open(path, "w") as f:
        json.dump(doc, f)
    read = manifest.read(path)
    assert all((r["codec"], r["keyframe_interval"]) == ("mp4v", 12) for r in read["videos"])
    summary = prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)
    assert (summary["prepared"], summary["rewritten"], summary["skipped"]) == (len(LAYOUT), len(LAYOUT), 0)
    doc = manifest.read(path)
    assert doc["format"] == manifest.FORMAT and all(r["codec"] == "h264" for r in doc["videos"])
    assert prep.prepare(source, str(dst), short_side=32, workers=0, progress=False)["prepared"] == 0
    summary = prep.prepare(source, str(dst), short_side=32, workers=0, progress=False, keyframe_interval=4)
    assert summary["rewritten"] == len(LAYOUT)
    assert _keyframes(dst / "train" / "left" / "a.mp4") == ([0, 4, 8, 12, 16], 20)


def test_without_libx264_mpeg4_with_the_same_keyframes_and_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.av, "codecs_available", prep.av.codecs_available - {"libx264"})
    _mp4(tmp_path / "src" / "train" / "a" / "v.mp4", frames=40, size=(48, 64))
    with pytest.warns(RuntimeWarning, match="no libx264 encoder: writing MPEG-4 Part 2"):
        summary = prep.prepare(str(tmp_path / "src"), str(tmp_path / "dst"), short_side=32, workers=0,
                               progress=False)
    assert summary["encoder"] == "mpeg4"
    out = tmp_path / "dst" / "train" / "a" / "v.mp4"
    assert _keyframes(out) == ([0, 16, 32], 40)
    row = manifest.read(manifest.path_in(str(tmp_path / "dst")))["videos"][0]
    assert (row["codec"], row["keyframe_interval"], row["crf"]) == ("mpeg4", 16, None)
    every = video.read_frames(str(out), 0, 40, 1, 40)
    assert np.array_equal(video.read_frames(str(out), 21, 8, 1, 40), every[21:29])


def test_keyframe_interval_and_crf_are_checked(source, tmp_path):
    with pytest.raises(ValueError, match="keyframe_interval to be an int >= 1, got 0"):
        prep.prepare(source, str(tmp_path / "d"), keyframe_interval=0)
    with pytest.raises(ValueError, match="crf to be an int from 0 to 51"):
        prep.prepare(source, str(tmp_path / "d"), crf=60)
