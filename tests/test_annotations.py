"""The field's annotation files (UCF101, HMDB51, Kinetics CSV, path lists) beside synthetic
videos laid out as each dataset publishes them: each split's counts, labels and class lists,
a listed file that is missing (counted, reported once), a class without a video, prepare
following symbolic links and taking the lists, and training/evaluation from the CLI."""
import json
import os
import shutil
import warnings

import pytest

from r2p1d_ext.cli import main
from r2p1d_ext.data import annotations as ann
from r2p1d_ext.data.dataset import VideoDataset
from r2p1d_ext.data.synthetic import make_synthetic

SMALL = dict(clip_len=4, short_side=32, crop_size=32)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Eight tiny videos of two motions: pool/<motion>/<i>.mp4."""
    root = str(tmp_path_factory.mktemp("pool"))
    make_synthetic(root, videos_per_class=(4, 0), classes=["left_fast", "rotate_cw"], frames=8, size=(32, 40),
                   progress=False)
    return os.path.join(root, "train")


def _video(pool, i):
    motion = ["left_fast", "rotate_cw"][i % 2]
    return os.path.join(pool, motion, f"{i // 2:04d}.mp4")


def _place(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def ucf(pool, tmp_path_factory):
    """UCF101's layout: UCF-101/<Class>/v_<Class>_gNN_c01.avi (our .mp4 bytes under .avi names
    are fine for the decoders) and ucfTrainTestlist/ with three classes, one of which has no
    video in split 1's test list; one listed training video is missing."""
    base = tmp_path_factory.mktemp("ucf")
    videos, lists = base / "UCF-101", base / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 Basketball\n")
    names = {"ApplyEyeMakeup": [0, 2, 4], "Archery": [1, 3, 5]}
    train, test = [], []
    for cls, ids in names.items():
        label = 1 if cls == "ApplyEyeMakeup" else 2
        for g, i in enumerate(ids):
            rel = f"{cls}/v_{cls}_g{g + 1:02d}_c01.avi"
            _place(_video(pool, i), str(videos / rel))
            (train.append(f"{rel} {label}") if g < 2 else test.append(rel))
    train.append("Archery/v_Archery_g09_c01.avi 2")  # listed, not on disk
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    (lists / "trainlist02.txt").write_text("\n".join(t.split()[0] + " 1" for t in test[:1]) + "\n")
    (lists / "testlist02.txt").write_text("\n".join(t.split()[0] for t in train[:4]) + "\n")
    return str(videos), str(lists)


def test_ucf101_splits_labels_missing_and_empty_class(ucf):
    videos, lists = ucf
    assert ann.detect_format(lists) == "ucf101"
    train = ann.read_annotations(lists, videos, "train", 1)
    assert train.classes == ["ApplyEyeMakeup", "Archery", "Basketball"]  # classInd order, unused class kept
    assert len(train.videos) == 4 and train.missing == ["Archery/v_Archery_g09_c01.avi"]
    assert sorted(label for _, label in train.videos) == [0, 0, 1, 1]
    assert all(os.path.basename(p).startswith(f"v_{train.classes[label]}_") for p, label in train.videos)
    test = ann.read_annotations(lists, videos, "val", 1)
    assert len(test.videos) == 2 and not test.missing and test.empty_classes() == ["Basketball"]
    assert len(ann.read_annotations(lists, videos, "test", 2).videos) == 4  # another split, other lists
    with pytest.raises(ValueError, match="official splits 1, 2 and 3"):
        ann.read_annotations(lists, videos, "train", 4)
    with pytest.raises(FileNotFoundError, match="trainlist03"):
        ann.read_annotations(lists, videos, "train", 3)


def test_dataset_reports_missing_videos_once(ucf):
    videos, lists = ucf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = VideoDataset(videos, "train", annotations=lists, **SMALL)
    said = [str(w.message) for w in caught if "not under" in str(w.message)]
    assert len(said) == 1 and "1 of 5 train videos" in said[0] and "v_Archery_g09_c01.avi" in said[0]
    assert len(d) == 4 and d.missing == ["Archery/v_Archery_g09_c01.avi"] and d.num_skipped == 0
    val = VideoDataset(videos, "val", annotations=lists, classes=d.classes, **SMALL)
    assert val.empty_classes == ["Basketball"] and len(val.videos) == 2
    clip, label, _, failed = val[0]
    assert clip.shape == (4, 32, 32, 3) and failed == -1


def test_hmdb51_split_files(pool, tmp_path):
    videos, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for c, cls in enumerate(["brush_hair", "cartwheel"]):
        lines = []
        for k in range(4):
            name = f"{cls}_clip{k}.avi"
            _place(_video(pool, 2 * k + c), str(videos / cls / name))
            lines.append(f"{name} {[1, 1, 2, 0][k]}")
        (splits / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (splits / f"{cls}_test_split2.txt").write_text("\n".join(f"{cls}_clip{k}.avi 1" for k in range(4)) + "\n")
    assert ann.detect_format(str(splits)) == "hmdb51"
    train = ann.read_annotations(str(splits), str(videos), "train", 1)
    test = ann.read_annotations(str(splits), str(videos), "test", 1)
    assert train.classes == ["brush_hair", "cartwheel"]
    assert (len(train.videos), len(test.videos)) == (4, 2)  # "0": in neither subset
    assert len(ann.read_annotations(str(splits), str(videos), "train", 2).videos) == 8
    with pytest.raises(ann.AnnotationError, match="test_split3"):
        ann.read_annotations(str(splits), str(videos), "train", 3)


def test_kinetics_csv_files_and_split_column(pool, tmp_path):
    root = tmp_path / "k400"
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    rows = {"train": [], "val": []}
    for i in range(8):
        label = ["air drumming", "zumba"][i % 2]
        subset = "train" if i < 6 else "val"
        yid, start = f"vid{i:02d}xyzAB", 10 * i
        name = f"{yid}_{start:06d}_{start + 10:06d}.mp4"
        # The downloaders' layouts differ: flat for some, by class for others.
        _place(_video(pool, i), str(root / subset / (label.replace(" ", "_") if i % 3 else "") / name))
        rows[subset].append(f"{label},{yid},{start},{start + 10},{subset},0")
    rows["val"].append("zumba,missingABCDE,5,15,val,0")
    (root / "annotations").mkdir()
    (root / "annotations" / "train.csv").write_text(header + "\n".join(rows["train"]) + "\n")
    (root / "annotations" / "validate.csv").write_text(header + "\n".join(rows["val"]) + "\n")
    (root / "annotations" / "kinetics_400_labels.csv").write_text("id,name\n0,abseiling\n")  # not a subset's
    (root / "all.csv").write_text(header + "\n".join(rows["train"] + rows["val"]) + "\n")
    for path in (str(root / "annotations"), str(root / "all.csv")):
        assert ann.detect_format(path) == "kinetics"
        train = ann.read_annotations(path, str(root), "train")
        val = ann.read_annotations(path, str(root), "val")
        assert train.classes == val.classes == ["air drumming", "zumba"]
        assert (len(train.videos), len(val.videos)) == (6, 2)
        assert val.missing == ["missingABCDE_000005_000015"]
    (root / "bad.csv").write_text("label,youtube_id\nzumba,abc\n")
    with pytest.raises(ann.AnnotationError, match="lacks time_start, time_end"):
        ann.read_annotations(str(root / "bad.csv"), str(root), "train")


def test_path_lists_with_indices_and_names(pool, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = [os.path.relpath(_video(pool, i), pool) for i in range(8)]
    (lists / "k_train_list_videos.txt").write_text("".join(f"{r} {i % 2}\n" for i, r in enumerate(rel[:6])))
    (lists / "k_val_list_videos.txt").write_text("".join(f"{r} {i % 2}\n" for i, r in enumerate(rel[6:])))
    assert ann.detect_format(str(lists)) == "list"
    train = ann.read_annotations(str(lists), pool, "train")
    assert train.classes == ["0", "1"] and len(train.videos) == 6
    assert all(("rotate_cw" in p) == (label == 1) for p, label in train.videos)
    # A checkpoint's class names: indices index them.
    named = ann.read_annotations(str(lists / "k_val_list_videos.txt"), pool, "val", classes=["left", "rotate"])
    assert named.classes == ["left", "rotate"] and len(named.videos) == 2
    by_name = tmp_path / "names.txt"
    by_name.write_text(f"{rel[0]} left_fast\n{rel[1]} rotate_cw\n")
    assert ann.read_annotations(str(by_name), pool, "val").classes == ["left_fast", "rotate_cw"]
    (tmp_path / "broken.txt").write_text("justapath\n")
    with pytest.raises(ann.AnnotationError, match=r"broken.txt:1: expected '<path> <label>'"):
        ann.read_annotations(str(tmp_path / "broken.txt"), pool, "val")


def test_prepare_follows_links_and_takes_lists(ucf, tmp_path, capsys):
    videos, lists = ucf
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(videos, linked / "UCF-101")  # a split built of links, as users make them
    out = tmp_path / "prepared"
    with pytest.warns(RuntimeWarning, match=r"1 videos listed .* not prepared \(Archery/v_Archery_g09_c01.avi\)"):
        assert main(["prepare", str(linked / "UCF-101"), str(out), "--short-side", "32", "--workers", "0",
                     "--no-progress", "--annotations", lists, "--split", "1"]) == 0
    said = capsys.readouterr()
    assert "prepared 6 " in said.out, said.out  # train 4 + test 2 of split 1
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                     if f.endswith(".mp4"))
    assert len(written) == 6 and written[0] == os.path.join("ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01.mp4")
    # The lists name .avi files; the prepared .mp4 files are found by their paths' stems.
    d = VideoDataset(str(out), "train", annotations=lists, **SMALL)
    assert len(d.videos) == 4 and d.probed == 0  # frame counts from the manifest


def test_find_videos_survives_a_link_cycle(pool, tmp_path):
    from r2p1d_ext.data.prepare import find_videos
    root = tmp_path / "src"
    _place(_video(pool, 0), str(root / "a" / "x.mp4"))
    os.symlink(str(root), root / "a" / "back")  # a cycle
    assert find_videos(str(root)) == [os.path.join("a", "x.mp4")]
    (root / "list.txt").write_text("a/x.mp4 0\n")
    assert len(ann.read_annotations(str(root / "list.txt"), str(root), "val").videos) == 1


def test_train_and_eval_from_ucf_lists(ucf, tmp_path, capsys):
    videos, lists = ucf
    out = tmp_path / "run"
    assert main(["train", "--data", videos, "--annotations", lists, "--split", "1", "--out", str(out),
                 "--epochs", "1", "--arch", "r2plus1d_10", "--batch-size", "2", "--clip-len", "4",
                 "--short-side", "32", "--crop-size", "32", "--workers", "0", "--eval-clips", "1",
                 "--eval-crops", "3", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["ApplyEyeMakeup", "Archery", "Basketball"]
    assert metrics["missing_videos"] == 1 and metrics["val_videos"] == 2
    assert [r["videos"] for r in metrics["per_class"]] == [1, 1, 0]
    assert (out / "per_class.csv").read_text().startswith("class,videos,correct,accuracy")
    assert (out / "best.pt").exists()
    capsys.readouterr()
    # eval takes the run's annotations and split by default; --subset names the subset.
    assert main(["eval", "--data", videos, "--checkpoint", str(out / "best.pt"), "--workers", "0",
                 "--subset", "test"]) == 0
    printed = capsys.readouterr().out
    assert "2 videos x 1 clips x 3 crops" in printed and "lowest class accuracy" in printed
    result = json.loads((out / "eval_test.json").read_text())
    assert result["val_video_top1"] == pytest.approx(metrics["val_video_top1"])
    for key in ("val_mean_class_acc", "val_video_top5", "per_class"):
        assert key in result
    with pytest.raises(SystemExit):
        main(["eval", "--data", videos, "--checkpoint", str(out / "best.pt"), "--split", "val"])
    assert "the subset to evaluate (a folder such as val) is --subset" in capsys.readouterr().err
