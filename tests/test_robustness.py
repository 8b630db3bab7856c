"""Failures a user can hit: each gives a clear error or the right answer (regression
tests: every one failed on e221eb3; docs/failure_behaviour.md lists them)."""
import contextlib
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

import r2p1d_ext
from r2p1d_ext import cli, ops, reference
from r2p1d_ext.data.dataset import VideoDataset, count_failed
from r2p1d_ext.data.synthetic import render_video
from r2p1d_ext.train import evaluate, resolve_device, train

from conftest import assert_close, make_pair
from test_trainer import _config, data  # noqa: F401  (data: the tiny synthetic set fixture)


def _block(train=True):
    ref, fused = make_pair(3, 4, 3, 1, 1, dtype=torch.float64)
    ref.train(train)
    fused.train(train)
    return ref, fused


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_double_backward_raises(train):
    """A gradient of a gradient used to come back as zeros (the backward ops had no
    autograd formula); now it is a clear RuntimeError, and gradgradcheck says so too."""
    _, fused = _block(train)
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(fused(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* not supported.*reference.SpatioTemporalConv"):
        torch.autograd.grad(g.square().sum(), fused.spatial_conv.weight)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(lambda t: fused(t), (x,))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_mode_ad_raises(train):
    """torch.func.jvp used to return a zero tangent in eval; forward-mode AD now raises."""
    _, fused = _block(train)
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="forward-mode AD .* not supported"):
        torch.func.jvp(fused, (x,), (torch.ones_like(x),))
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        fused(fwAD.make_dual(x, torch.ones_like(x)))


def test_eval_gradient_keeps_a_nan_in_its_sample():
    """Eval with autograd: a NaN in sample 0 and a loss on sample 1 only. The eval path used
    to run the training kernels and multiply 0 by the NaN batch mean, poisoning every
    gradient; now sample 1's input gradient is eager's, and sample 0's is eager's zeros."""
    ref, fused = _block(train=False)
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    x[0, 1, 2, 3, 3] = float("nan")
    grads = []
    for block in (ref, fused):
        xi = x.clone().requires_grad_()
        block(xi)[1].square().sum().backward()
        grads.append(xi.grad)
    assert torch.isfinite(grads[1]).all()
    assert_close(grads[1][1], grads[0][1], 1e-10, "sample 1")
    assert torch.equal(grads[1][0], grads[0][0])


def test_eval_is_one_op_with_autograd_and_in_export():
    """Eval is the folded inference op with or without autograd, so torch.export of an eval
    model records it (it used to record the training ops unless run under no_grad)."""
    _, fused = _block(train=False)
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused(x).sum().backward()
    names = {e.name for e in prof.events()}
    assert "r2p1d::fused_eval" in names and "r2p1d::temporal_conv_bnrelu" not in names
    graph = torch.export.export(fused, (x.detach(),)).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert any("fused_eval" in t for t in targets), targets
    assert not any("spatial_conv_stats" in t for t in targets), targets


def test_eval_gradients_match_reference():
    """The folded op's own backward: every gradient of an eval block, BatchNorm's affine
    parameters included (through the folding), as the unfused block's."""
    ref, fused = _block(train=False)
    x = torch.randn(2, 3, 5, 7, 6, dtype=torch.float64)
    for block in (ref, fused):
        xi = x.clone().requires_grad_()
        block(xi).square().sum().backward()
        block.x_grad = xi.grad
    assert_close(fused.x_grad, ref.x_grad, 1e-10, "grad input")
    for (name, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, 1e-10, f"grad {name}")


def test_reference_block_does_double_backward():
    """What the error message recommends works: the reference block has higher-order
    gradients, and loads the fused block's state_dict."""
    _, fused = _block()
    ref = reference.SpatioTemporalConv(3, 4, 3, 1, 1).double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(ref(x).square().sum(), x, create_graph=True)
    gw, = torch.autograd.grad(g.square().sum(), ref.spatial_conv.weight)
    assert gw.abs().sum() > 0
    assert isinstance(r2p1d_ext.fuse(ref), r2p1d_ext.SpatioTemporalConv)


# ------------------------------------------------------------------ videos that fail late
def _truncated_avi(path, frames=40, keep=0.5):
    """An MJPG .avi cut short: its header still promises `frames` frames, but only the
    first part decodes, so a clip that starts late fails."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    writer.release()
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


@pytest.fixture
def set_with_truncated_videos(tmp_path):
    """val and train: classes a and b, two good videos each, plus two truncated ones in b."""
    for split in ("train", "val"):
        for cls, motion in (("a", "left_fast"), ("b", "up")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for k in range(2):
                frames = render_video(np.random.default_rng(k), motion, 40, (32, 32))
                writer = cv2.VideoWriter(str(folder / f"good{k}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (32, 32))
                for f in frames:
                    writer.write(f)
                writer.release()
        for k in range(2):
            _truncated_avi(tmp_path / split / "b" / f"cut{k}.avi")
    return str(tmp_path)


class _MeanColour(torch.nn.Module):
    """A classifier of a clip's mean colour: enough for evaluate() to score."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean((2, 3, 4)))


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_drops_a_failed_video_and_counts_it(set_with_truncated_videos, workers):
    """A video whose late clips fail to decode is left out of every metric and counted,
    with DataLoader workers too. It used to be replaced by the next video's clips under
    that video's id and label (one video scored 5 times, another losing clips), and the
    count stayed in the workers (0 skipped reported with --workers 2)."""
    val = VideoDataset(set_with_truncated_videos, "val", clip_len=4, short_side=32, crop_size=32,
                       clips_per_video=3)
    assert len(val.videos) == 6 and not val.unreadable  # the headers look fine
    loader = DataLoader(val, batch_size=4, num_workers=workers)
    with pytest.warns(RuntimeWarning) if workers == 0 else contextlib.nullcontext():
        metrics = evaluate(_MeanColour(), loader, torch.device("cpu"))
    assert metrics["val_failed_videos"] == 2
    assert sum(map(sum, metrics["confusion"])) == 4  # the four good videos, each once


def test_training_counts_failed_videos_across_workers(set_with_truncated_videos):
    """In training, a clip that fails to decode is flagged (never replaced by another
    video's), and the failure reaches the main process through the items, whichever worker
    met it: the same videos as without workers (same seed, same clip starts)."""
    counts = []
    for workers in (0, 2):
        train = VideoDataset(set_with_truncated_videos, "train", clip_len=4, short_side=32, crop_size=32, seed=3)
        failed = set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for clips, labels, vids, bad in DataLoader(train, batch_size=3, num_workers=workers):
                assert torch.equal(bad[bad >= 0], vids[bad >= 0])  # flagged under its own id
                assert (clips[bad < 0].flatten(1).abs().sum(1) > 0).all() and not clips[bad >= 0].any()
                count_failed(bad, failed)
        counts.append(failed)
    assert counts[0] == counts[1] and len(counts[0]) >= 1


# ------------------------------------------------------------------ runs and checkpoints
def test_read_only_run_folder_fails_before_training(data, tmp_path):
    """A run folder that cannot be written used to fail after a whole epoch, saving
    nothing; now before the first step, naming the folder."""
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root without CAP_DAC_OVERRIDE off)")
        with pytest.raises(PermissionError, match="cannot write to the run folder"):
            train(_config(data, out, epochs=1))
    finally:
        out.chmod(0o700)


def test_unwritable_check_catches_a_folder_that_refuses_files(data, tmp_path, monkeypatch):
    """The same check where permissions cannot be dropped (root): the probe file fails."""
    import tempfile as tf

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tf, "NamedTemporaryFile", refuse)
    with pytest.raises(PermissionError, match="cannot write to the run folder .*Read-only"):
        train(_config(data, tmp_path / "run", epochs=1))


def test_truncated_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    """checkpoint.pt cut short used to block every resume with a raw stream error; the
    previous checkpoint is kept and used, with a warning naming the bad file."""
    out = tmp_path / "run"
    train(_config(data, out, epochs=1, checkpoint_every=1))
    latest, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    assert latest.exists() and prev.exists()
    blob = latest.read_bytes()
    latest.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(RuntimeWarning, match=r"checkpoint.pt cannot be read.*using the previous one"):
        result = train(_config(data, out, epochs=2))
    assert result["epoch"] == 2
    latest.write_bytes(b"garbage")
    prev.unlink()
    with pytest.raises(RuntimeError, match=r"(?s)cannot be read.* no .*checkpoint.prev.pt to fall back to"):
        train(_config(data, out, epochs=3))


def test_stale_temporary_checkpoints_are_removed(data, tmp_path):
    """A kill during a checkpoint or JSON-log write leaves .tmp-*.pt (up to a whole
    checkpoint each) or .tmp-*.json; the next run removes them and nothing else."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-abc123.pt").write_bytes(b"x" * 1000)
    (out / ".tmp-def456.json").write_text('{"epoch": ')
    (out / "notes.tmp").write_text("not ours")
    (out / ".tmp-notes.txt").write_text("not ours either")
    train(_config(data, out, epochs=1))
    assert not list(out.glob(".tmp-*.pt")) and not list(out.glob(".tmp-*.json"))
    assert (out / "notes.tmp").exists() and (out / ".tmp-notes.txt").exists()


def test_last_incomplete_batch_is_dropped(data, tmp_path):
    """6 training clips with batch 4: one step per epoch (the batch of 2 left over would be
    as risky as a batch of 1, whose BatchNorm can see one value per channel)."""
    result = train(_config(data, tmp_path / "run", epochs=1, batch_size=4))
    assert result["step"] == 1
    with pytest.raises(ValueError, match="fewer than --batch-size 8"):
        train(_config(data, tmp_path / "run2", batch_size=8))


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs: expected a finite value >= 1, got 0"),
    (["--epochs", "-3"], "--epochs: expected a finite value >= 1, got -3"),
    (["--batch-size", "0"], "--batch-size: expected a finite value >= 1, got 0"),
    (["--crop-size", "0"], "--crop-size: expected a finite value >= 1"),
    (["--short-side", "0"], "--short-side: expected a finite value >= 1"),
    (["--lr", "nan"], "--lr: expected a finite value"),
    (["--lr", "-1"], "--lr: expected a finite value"),
    (["--workers", "x"], "--workers: expected an integer, got 'x'"),
])
def test_cli_numbers_are_checked_up_front(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", "d", "--out", "o"] + args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_make_synthetic_counts_are_checked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["make-synthetic", "dir", "--train-per-class", "-1"])
    assert "--train-per-class: expected a finite value >= 1, got -1" in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_step(data, tmp_path, monkeypatch):
    """A loss that turns NaN used to train on and exit 0: now it stops before the step,
    saying where, and the last checkpoint stays good."""
    out = tmp_path / "run"
    train(_config(data, out, epochs=1))
    before = (out / "checkpoint.pt").read_bytes()
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* epoch 2, step 4"):
        train(_config(data, out, epochs=2))
    assert (out / "checkpoint.pt").read_bytes() == before


def test_device_cuda_means_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_resume_with_another_arch_or_settings(data, tmp_path):
    out = tmp_path / "run"
    train(_config(data, out, epochs=1))
    with pytest.raises(ValueError, match="is a r2plus1d_10 checkpoint, this run asks for --arch r2plus1d_18"):
        train(_config(data, out, arch="r2plus1d_18", epochs=2))
    with pytest.warns(RuntimeWarning, match=r"changed settings: clip_len 4 -> 6, lr 0.01 -> 0.05"):
        train(_config(data, out, epochs=2, lr=0.05, clip_len=6))


# ------------------------------------------------------------------ drop-in for nn.Conv3d
def test_conv3d_keyword_arguments():
    block = r2p1d_ext.SpatioTemporalConv(3, 8, 3, padding=1, dilation=1, groups=1, padding_mode="zeros",
                                         dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert block.bn.running_mean.dtype == torch.float64
    meta = r2p1d_ext.SpatioTemporalConv(64, 64, 3, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")  # the usual deferred initialisation
    assert not any(p.is_meta for p in meta.parameters())
    for kwargs, message in (({"dilation": 2}, "dilation=1"), ({"groups": 2}, "groups=1"),
                            ({"padding_mode": "reflect"}, "padding_mode='zeros'")):
        with pytest.raises(ValueError, match=message):
            r2p1d_ext.SpatioTemporalConv(4, 8, 3, **kwargs)


def test_torch_jit_script_says_what_to_use():
    with pytest.raises(RuntimeError, match="torch.jit.trace, torch.compile or torch.export"):
        torch.jit.script(r2p1d_ext.SpatioTemporalConv(3, 4, 3))
    traced = torch.jit.trace(r2p1d_ext.SpatioTemporalConv(3, 4, 3, padding=1).eval(), torch.randn(1, 3, 4, 6, 6))
    assert traced(torch.randn(1, 3, 4, 6, 6)).shape == (1, 4, 4, 6, 6)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_of_zero_clips(train):
    """nn.Conv3d takes a batch of 0 and returns an empty output; so does the block (it used
    to raise), with zero gradients and no running-statistics update."""
    block = r2p1d_ext.SpatioTemporalConv(3, 8, 3, (1, 2, 2), 1).train(train)
    x = torch.randn(0, 3, 4, 9, 9, requires_grad=True)
    out = block(x)
    assert out.shape == torch.nn.Conv3d(3, 8, 3, (1, 2, 2), 1)(x).shape == (0, 8, 4, 5, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape and not block.spatial_conv.weight.grad.any()
    assert block.bn.num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="non-empty channel, time and space"):
        r2p1d_ext.SpatioTemporalConv(3, 8, (1, 3, 3), padding=1)(torch.randn(2, 3, 0, 9, 9))


BAD_CALLS = {
    "channels": (lambda x, w: ops.spatial_conv_stats(x, w[:, :2].contiguous(), None, [1, 1], [1, 1]),
                 "expected input with 2 channels"),
    "rank": (lambda x, w: ops.spatial_conv_stats(x[0], w, None, [1, 1], [1, 1]), "expected input to be a 5-D"),
    "dtype": (lambda x, w: ops.spatial_conv_stats(x, w.double(), None, [1, 1], [1, 1]), "expected spatial weight of dtype"),
    "kernel": (lambda x, w: ops.spatial_conv_stats(x[..., :1, :1], w, None, [1, 1], [0, 0]),
               "smaller than the kernel size"),
    "temporal": (lambda x, w: ops.fused_eval(x, w, None, torch.randn(2, 5, 3, 1, 1), None, [1, 1, 1], [1, 1, 1]),
                 "expected an intermediate with 5 channels"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_fail_alike_in_eager_compile_and_export(case):
    """The fake kernels check what the kernels check: the same ValueError message in eager,
    under torch.compile and in torch.export (they used to trace on and fail obscurely)."""
    fn, message = BAD_CALLS[case]
    x, w = torch.randn(2, 3, 4, 6, 6), torch.randn(4, 3, 1, 3, 3)
    with pytest.raises(ValueError, match=message):
        fn(x, w)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=message):
        torch.compile(fn, fullgraph=True, backend="eager")(x, w)

    class Call(torch.nn.Module):
        def forward(self, x, w):
            return fn(x, w)

    with pytest.raises(Exception, match=message):
        torch.export.export(Call(), (x, w))


def test_kill_9_loop_always_leaves_a_loadable_checkpoint(data, tmp_path):
    """Training with a checkpoint every step, killed with SIGKILL at random points a few
    times, then resumed to the end: after each kill the checkpoint loads (weights_only), and
    in the end no temp file is left and the run has finished."""
    import random
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "r2p1d_ext.cli", "train", "--data", data, "--out", str(out), "--epochs", "3",
           "--arch", "r2plus1d_10", "--batch-size", "2", "--clip-len", "4", "--short-side", "32", "--crop-size", "32",
           "--workers", "0", "--no-hflip", "--eval-clips", "1", "--checkpoint-every", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = random.Random(0)
    latest = out / "checkpoint.pt"
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # Wait for a new checkpoint (or any state at all), then kill at a random moment.
        start_mtime = latest.stat().st_mtime if latest.exists() else 0
        while time.time() < deadline and proc.poll() is None:
            if latest.exists() and latest.stat().st_mtime > start_mtime:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if latest.exists():
            state = torch.load(latest, weights_only=True)  # never half a file
            assert state["step"] >= 1
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert torch.load(latest, weights_only=True)["epoch"] == 3
    assert not list(out.glob(".tmp-*.pt"))
