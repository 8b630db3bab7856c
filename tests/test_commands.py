"""What an installed user runs besides training: ``r2p1d predict`` (whole videos and windows,
bad files, exit status), loading trained weights (checkpoints and torchvision state_dicts,
fine-tuning with ``--init``), ``r2p1d export`` (ONNX Runtime and torch.export round trips),
``r2p1d check`` (passes here, fails on a wrong kernel) and ``r2p1d bench`` (a tiny size),
on a kernels-only install too, and the message of a source tree without the extension."""
import copy
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from r2p1d_ext import models
from r2p1d_ext.cli import main
from r2p1d_ext.data.dataset import VideoDataset
from r2p1d_ext.ops import normalize_clips
from r2p1d_ext.data.synthetic import make_synthetic
from r2p1d_ext.models.loading import load_initial_weights, load_model
from r2p1d_ext.tools import check
from r2p1d_ext.train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["left_fast", "rotate_cw", "up"]
CONFIG = dict(arch="r2plus1d_10", clip_len=4, frame_stride=1, short_side=32, crop_size=32, eval_clips=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("videos"))
    make_synthetic(root, videos_per_class=(2, 2), classes=CLASSES, frames=16, size=(32, 40), fps=25, progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as r2p1d train writes it (random weights, BatchNorm statistics moved off
    their initial values so that the eval fold matters)."""
    torch.manual_seed(0)
    model = models.build_model("r2plus1d_10", len(CLASSES))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.8, 1.2)
    path = str(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    config = dataclasses.asdict(TrainConfig("data", "out", **CONFIG))
    torch.save({"model": model.state_dict(), "config": config, "classes": CLASSES, "epoch": 1, "step": 3,
                "batches_done": 0, "history": []}, path)
    return path


def _tv_state_dict(tmp_path, num_classes, arch="r2plus1d_18"):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    path = str(tmp_path / f"{arch}_{num_classes}.pth")
    torch.save(getattr(tv.models.video, arch)(num_classes=num_classes).state_dict(), path)
    return path


# ------------------------------------------------------------------ predict
def test_predict_averages_the_clips_that_evaluation_takes(data, checkpoint, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--checkpoint", checkpoint, os.path.join(data, "val"), "--clips", "2", "--top-k", "3",
                 "--out", str(out), "--workers", "1", "--batch-size", "3", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["clips"] == 2 and len(r["top"]) == 3 for r in rows)
    assert "6 videos classified, 0 unreadable" in capsys.readouterr().out
    # The same numbers by hand: evaluation's clips of each video, softmax, averaged.
    loaded = load_model(checkpoint)
    ds = VideoDataset(data, "val", clip_len=4, short_side=32, crop_size=32, clips_per_video=2)
    for v, (path, _, _) in enumerate(ds.videos):
        clips = normalize_clips(torch.stack([ds[2 * v][0], ds[2 * v + 1][0]]), ds.mean, ds.std).contiguous()
        with torch.no_grad():
            probs = loaded.model(clips).softmax(1).mean(0)
        row = next(r for r in rows if os.path.samefile(r["video"], path))
        best = int(probs.argmax())
        assert row["top"][0]["class"] == CLASSES[best]
        assert row["top"][0]["probability"] == pytest.approx(float(probs[best]), abs=1e-5)


def test_predict_windows_have_their_times(data, checkpoint, tmp_path):
    video = os.path.join(data, "val", "up", "0000.mp4")  # 16 frames at 25 fps
    out = tmp_path / "w.csv"
    assert main(["predict", "--checkpoint", checkpoint, video, "--window-stride", "0.12", "--top-k", "1",
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    # 4-frame clips every 3 frames (0.12 s) up to the last full clip: starts 0, 3, 6, 9, 12.
    assert [(float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        (0.0, 0.16), (0.12, 0.28), (0.24, 0.4), (0.36, 0.52), (0.48, 0.64)]
    assert all(r["class"] in CLASSES and r["rank"] == "1" for r in rows)


def test_predict_reports_bad_videos_and_goes_on(data, checkpoint, tmp_path, capsys):
    good = os.path.join(data, "val", "up", "0001.mp4")
    garbage = tmp_path / "zeros.mp4"
    garbage.write_bytes(bytes(5000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(good, "rb").read()[:2000])
    out = tmp_path / "p.jsonl"
    with pytest.warns(RuntimeWarning, match="skipping video .*zeros.mp4"):
        code = main(["predict", "--checkpoint", checkpoint, good, str(garbage), str(truncated), "--out", str(out),
                     "--workers", "0", "--no-progress"])
    assert code == 0
    rows = {os.path.basename(json.loads(line)["video"]): json.loads(line) for line in out.read_text().splitlines()}
    assert "top" in rows["0001.mp4"] and "error" in rows["zeros.mp4"]
    assert "error" in rows["truncated.mp4"] or rows["truncated.mp4"]["clips"] > 0  # reported, or what decoded
    assert "ERROR" in capsys.readouterr().out
    # Nothing classifiable: exit status 1.
    with pytest.warns(RuntimeWarning):
        assert main(["predict", "--checkpoint", checkpoint, str(garbage), "--workers", "0", "--no-progress"]) == 1


def test_predict_mistakes_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path)]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "missing.mp4")]) == 2
    assert "no such video file or folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path)]) == 2
    assert "--checkpoint FILE" in capsys.readouterr().err


# ------------------------------------------------------------------ torchvision weights, fine-tuning
def test_torchvision_weights_need_matching_labels(data, tmp_path, capsys):
    weights = _tv_state_dict(tmp_path, 5)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(4)) + "\n")
    video = os.path.join(data, "val", "up", "0000.mp4")
    base = ["predict", "--weights", weights, "--arch", "r2plus1d_18", video, "--workers", "0", "--no-progress"]
    assert main(base + ["--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "the labels file has 4 names, the classifier of" in err and "has 5 outputs" in err, err
    labels.write_text("\n".join(f"class{i}" for i in range(5)) + "\n")
    assert main(["predict", "--weights", weights, "--arch", "r2plus1d_34", "--labels", str(labels), video]) == 2
    err = capsys.readouterr().err
    assert "does not fit r2plus1d_34" in err and "missing" in err, err
    assert main(base + ["--labels", str(labels), "--clips", "1"]) == 0
    assert "1 video classified" in capsys.readouterr().out
    loaded = load_model(weights, arch="r2plus1d_18", labels=[f"class{i}" for i in range(5)])
    tv = pytest.importorskip("torchvision").models.video.r2plus1d_18(num_classes=5)
    tv.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), tv.eval()(x), atol=1e-4)


def test_init_from_torchvision_weights_with_another_class_count(data, tmp_path, capsys):
    weights = _tv_state_dict(tmp_path, 5)
    model = models.build_model("r2plus1d_18", 3)
    head = model.fc.weight.detach().clone()
    line = load_initial_weights(model, weights)
    assert "the classifier is new (5 classes there, 3 here)" in line
    source = models.torchvision_keys_to_fused(torch.load(weights, weights_only=True))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert torch.equal(model.fc.weight, head)
    # Anything else that differs is an error naming the keys.
    with pytest.raises(ValueError, match="does not fit this network: .*(missing|unexpected)"):
        load_initial_weights(models.build_model("r2plus1d_34", 3), weights)
    # The command: a fresh run says what it loaded.
    out = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(out), "--init", weights, "--arch", "r2plus1d_18",
                 "--epochs", "1", "--batch-size", "3", "--clip-len", "2", "--short-side", "32", "--crop-size", "32",
                 "--workers", "0", "--eval-clips", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "initialised from" in printed and "the classifier is new (5 classes there, 3 here)" in printed


# ------------------------------------------------------------------ export
def test_export_onnx_round_trip_through_onnx_runtime(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "checked with onnxruntime" in printed
    error = float(printed.split("max abs error ")[1].split()[0])
    assert error < 1e-4
    from r2p1d_ext.tools.export import read_onnx_labels
    assert read_onnx_labels(str(out)) == CLASSES
    assert (tmp_path / "model.onnx.labels.txt").read_text().split() == CLASSES
    # A dynamic batch: another batch size runs.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 32, 32), dtype=np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (3, 3)


def test_export_onnx_without_its_packages_names_the_extra(checkpoint, tmp_path):
    done = _python(["import sys", "sys.modules['onnxscript'] = None  # as if not installed",
                    "from r2p1d_ext.cli import main",
                    f"sys.exit(main(['export', '--checkpoint', {checkpoint!r}, '--out', 'm.onnx']))"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "module 'onnxscript' is missing): pip install 'r2p1d_ext[deploy]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_export_pt2_round_trip(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", checkpoint, "--format", "pt2", "--out", str(out), "--batch", "2",
                 "--check"]) == 0
    assert "checked with torch.export.load" in capsys.readouterr().out
    program = torch.export.load(str(out))
    x = torch.randn(2, 3, 4, 32, 32)
    loaded = load_model(checkpoint)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), loaded.model(x), atol=1e-5)
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--batch", "zero"]) == 2


# ------------------------------------------------------------------ check and bench
def test_check_passes_here(tmp_path, capsys):
    report = tmp_path / "check.json"
    assert main(["check", "--quick", "--device", "cpu", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "0 failed" in printed and "CPU kernels:" in printed and "kernel families:" in printed
    rows = json.loads(report.read_text())["rows"]
    assert {r["check"] for r in rows} == {"gradcheck", "opcheck", "module train", "module eval"}
    assert all(r["passed"] for r in rows)


def test_the_full_check_passes_here(capsys):
    """Every shape (conv4_x's 576 mid channels included) on this machine's CPU kernels: CI runs
    it on whichever CPU kind it gets (Intel with AMX, AMD)."""
    assert main(["check", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "0 failed" in out and "module train  conv4_x" in out
    # One progress line per check, naming it (not the last row's kind).
    assert "cpu (CPU kernels): module train and eval, float32, 4 shapes: 8 passed in" in err, err


def test_the_block_check_is_immune_to_relu_kinks():
    """conv4_x in float32 over many seeds: on the AMD EPYC seeds 8-10 each put a ReLU input
    within rounding of 0, where the fused block and the float64 reference fell on two sides
    (2.7e-3 against a 1e-4 tolerance) before the kink band; every seed must pass."""
    shape = check.SHAPES[3]
    for seed in range(12):
        errors = check.module_errors(shape, "cpu", torch.float32, True, seed=seed)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= check.TOLERANCE[torch.float32], (seed, worst, errors[worst])


def test_a_flipped_kink_costs_nothing_a_wrong_value_does():
    """The reference itself as the 'fused' block, with its ReLU taking the other side wherever
    its input is within 1e-5 standard deviations of 0 (as a float32 kernel may): without the
    kink band the gradients differ by whole terms; with it only by the flipped values themselves
    (under 1e-5 of the spread, a few of 900k). The same block with its ReLU input off by 1e-3
    still fails."""
    class OtherSide(torch.nn.Module):
        def __init__(self, band, shift=0.0):
            super().__init__()
            self.band, self.shift = band, shift

        def forward(self, v):
            v = v + self.shift
            return v * ((v > 0) ^ (v.abs() < self.band)).to(v.dtype)

    shape = check.SHAPES[3]
    ref, _ = check.make_block_pair(shape, torch.float64)
    torch.manual_seed(0)
    x = torch.randn(2, shape[1], 4, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        spread = ref.bn(ref.spatial_conv(x)).std().item()
    ref.bn.reset_running_stats()

    def worst(relu, band):
        fused = copy.deepcopy(ref)
        fused.relu = relu
        errors = check.compare_block(fused, copy.deepcopy(ref), x, True, band)
        return max(errors.values())

    flipped = OtherSide(1e-5 * spread)
    assert worst(flipped, 0.0) > 1e-4
    assert worst(flipped, 1e-4) < 1e-6
    assert worst(OtherSide(0.0, shift=1e-3 * spread), 1e-4) > 1e-4


def _python(lines, cwd, env=None):
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_check_fails_when_a_kernel_is_wrong(tmp_path):
    """The CPU kernel of spatial_conv_stats replaced at the dispatcher by one whose output is
    off by 1e-3 (its statistics right): the block's checks must say FAIL, exit status 1."""
    done = _python([
        "import sys, torch, r2p1d_ext",
        "from r2p1d_ext import reference",
        "from r2p1d_ext.cli import main",
        "lib = torch.library.Library('r2p1d', 'IMPL')",
        "def wrong(x, w, b, stride, padding):",
        "    y, mean, var = reference.spatial_conv_stats(x, w, b, stride, padding)",
        "    return y + 1e-3, mean, var",
        "lib.impl('spatial_conv_stats', wrong, 'CPU')",
        "sys.exit(main(['check', '--quick', '--device', 'cpu']))"], tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    failed = [line for line in done.stdout.splitlines() if " FAIL" in line]
    assert any(line.startswith("module train") for line in failed), done.stdout


def test_bench_runs_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--stages", "conv5_x", "--batch", "1", "--clip-len", "2", "--crop", "32", "--warmup", "0",
                 "--repeats", "1", "--no-memory", "--network", "--arch", "r2plus1d_10", "--no-engines",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # Ratios in words: "2.70x slower", never "0.37x faster".
    assert re.search(r"train vs eager \d+\.\d\dx (faster|slower)", printed), printed
    assert not re.search(r"\b0\.\d+x faster", printed), printed
    block = json.loads(out.read_text())
    network = json.loads((tmp_path / "bench-network.json").read_text())
    assert [r["stage"] for r in block["rows"]] == ["conv5_x"] and block["speedup"]["block_train_vs_eager"] > 0
    assert network["arch"] == "r2plus1d_10" and network["rows"]["fused"]["train_ms"] > 0
    assert main(["bench", "--stages", "conv9_x"]) == 2


def test_a_kernels_only_install_runs_check_bench_and_export(checkpoint, tmp_path):
    """OpenCV, NumPy-free parts aside: with cv2, tqdm and matplotlib unavailable, check, bench
    and export run and predict says which extra it needs."""
    block = "for name in ('cv2', 'tqdm', 'matplotlib'): sys.modules[name] = None  # as if not installed"
    for args, code in ((["check", "--quick", "--device", "cpu"], 0),
                       (["bench", "--stages", "conv5_x", "--batch", "1", "--clip-len", "2", "--crop", "32",
                         "--warmup", "0", "--repeats", "1", "--no-memory"], 0),
                       (["export", "--checkpoint", checkpoint, "--format", "pt2", "--out", str(tmp_path / "m.pt2")], 0),
                       (["predict", "--checkpoint", checkpoint, "x.mp4"], 1)):
        done = _python(["import sys", block, "from r2p1d_ext.cli import main", f"sys.exit(main({args!r}))"], tmp_path)
        assert done.returncode == code, (args, done.stdout[-2000:], done.stderr[-2000:])
        if args[0] == "predict":
            assert "r2p1d predict needs the training dependencies" in done.stderr
            assert "pip install 'r2p1d_ext[train]'" in done.stderr


def test_a_source_tree_without_the_extension_says_what_to_run(tmp_path):
    tree = tmp_path / "clone"
    shutil.copytree(os.path.join(ROOT, "r2p1d_ext"), tree / "r2p1d_ext",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.py"), tree / "setup.py")
    # As in a clone beside a non-editable install: no editable-install finder that would
    # find this checkout's own build.
    done = _python(["import sys",
                    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]",
                    "import r2p1d_ext"], tree, env={"PYTHONPATH": str(tree)})
    assert done.returncode == 1
    assert "circular import" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "is not built" in last and "pip install --no-build-isolation -e ." in last, last


# ------------------------------------------------------------------ what a new user meets
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_written_file_honours_the_umask(data, checkpoint, tmp_path, umask):
    """Checkpoints, JSON, predictions and exported models get 0666 less the umask (0644 under
    umask 022: a serving container or a colleague can read them), as log.csv and the PNGs do."""
    from r2p1d_ext._io import write_json_atomic
    from r2p1d_ext.train.checkpoint import save_atomic

    out = tmp_path / f"files-{umask:o}"
    out.mkdir()
    old = os.umask(umask)
    try:
        save_atomic({"epoch": 1}, str(out / "checkpoint.pt"))
        save_atomic({"epoch": 2}, str(out / "checkpoint.pt"), keep_previous=True)
        write_json_atomic(str(out / "metrics.json"), {"epoch": 1})
        video = os.path.join(data, "val", "up", "0000.mp4")
        assert main(["predict", "--checkpoint", checkpoint, video, "--clips", "1", "--out", str(out / "p.jsonl"),
                     "--workers", "0", "--no-progress"]) == 0
        assert main(["eval", "--data", data, "--checkpoint", checkpoint, "--workers", "0",
                     "--out", str(out / "eval.json")]) == 0
        assert main(["export", "--checkpoint", checkpoint, "--format", "pt2", "--batch", "1",
                     "--out", str(out / "model.pt2")]) == 0
    finally:
        os.umask(old)
    modes = {name: os.stat(out / name).st_mode & 0o777 for name in os.listdir(out)}
    assert set(modes) >= {"checkpoint.pt", "checkpoint.prev.pt", "metrics.json", "p.jsonl", "eval.json",
                          "model.pt2", "model.pt2.labels.txt"}, modes
    assert all(mode == 0o666 & ~umask for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


@pytest.mark.parametrize("kernels", ["float32", "emulated-amx"])
def test_a_reduced_precision_on_the_cpu_is_said_once(tmp_path, kernels):
    """The block under bfloat16 autocast on the CPU, without a bfloat16 path (float32 here by
    R2P1D_CPU_KERNELS, as on a CPU with neither AMX nor AVX512-BF16), warns once per process
    that the CPU kernels run it slower than float32 (a fresh process: the warning is once per
    process); with a bfloat16 path it says nothing, and float16 always warns."""
    done = _python([
        "import warnings, torch",
        "from r2p1d_ext import SpatioTemporalConv",
        "conv = SpatioTemporalConv(4, 4, 3, padding=1)",
        "x = torch.randn(2, 4, 3, 6, 6)",
        "with warnings.catch_warnings(record=True) as seen:",
        "    warnings.simplefilter('always')",
        "    conv(x)",
        "    assert not seen, [str(w.message) for w in seen]",
        "    with torch.autocast('cpu', dtype=torch.bfloat16):",
        "        conv(x); conv(x)",
        "    print(len(seen), seen[0].message if seen else '-')",
        "    conv.half()(x.half())",
        "    print(len(seen), seen[-1].message)"], tmp_path, env={"R2P1D_CPU_KERNELS": kernels})
    assert done.returncode == 0, done.stderr[-2000:]
    bf16_line, f16_line = done.stdout.strip().splitlines()
    count, message = bf16_line.split(" ", 1)
    if kernels == "float32":
        assert count == "1" and message.startswith("bfloat16 on the CPU: R2P1D_CPU_KERNELS=float32") and \
            "slower than float32" in message
        assert f16_line.split(" ", 1)[0] == "1"  # once per process, whichever dtype came first
    else:
        assert count == "0", message
        count, message = f16_line.split(" ", 1)
        assert count == "1" and message.startswith("float16 on the CPU: r2p1d_ext's CPU kernels have no float16")


def test_prepare_mistakes_are_one_line(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "no-such-folder"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith("r2p1d prepare: error: expected SRC to be a folder of videos"), err


def test_speed_ratios_are_words():
    from r2p1d_ext.tools.timing import as_speed
    assert as_speed(1.37) == "1.37x faster" and as_speed(0.37) == "2.70x slower"
    assert as_speed(2.0, "openvino") == "2.00x faster than openvino" and as_speed(1.001) == "as fast"


def test_counts_read_as_english():
    from r2p1d_ext._cli_common import plural
    assert (plural(1, "step"), plural(2, "step"), plural(1, "process", "processes"),
            plural(0, "batch", "batches")) == ("1 step", "2 steps", "1 process", "0 batches")
