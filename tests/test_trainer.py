"""Trainer and CLI end to end on a tiny synthetic set: logs, checkpoints, resume equivalence,
signals, the 2-process DDP run (gloo), evaluation."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from r2p1d_ext.train import checkpoint as ckpt
from r2p1d_ext.cli import main
from r2p1d_ext.train.config import TrainConfig
from r2p1d_ext.train.distributed import EpochSampler
from r2p1d_ext.train.loop import lr_lambda, train
from conftest import tiny_video_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--arch", "r2plus1d_10", "--batch-size", "2", "--clip-len", "4", "--short-side", "32",
        "--crop-size", "32", "--workers", "0", "--eval-clips", "2", "--no-hflip", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_video_set(tmp_path_factory, "tiny")


def _config(data, out, **kw):
    base = dict(data=data, out=str(out), arch="r2plus1d_10", batch_size=2, clip_len=4, short_side=32,
                crop_size=32, workers=0, eval_clips=2, hflip=False, progress=False, epochs=2, lr=0.01)
    base.update(kw)
    return TrainConfig(**base)


def test_cli_train_and_eval_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(out), "--epochs", "1"] + TINY) == 0
    first = capsys.readouterr().out.splitlines()[0]  # the start-of-run summary
    assert first.startswith("training r2plus1d_10 (") and "on 2 classes:" in first and "-> " + str(out) in first, first
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("epoch", "train_loss", "val_top1", "val_top5", "val_video_top1", "confusion", "history"):
        assert key in metrics
    assert metrics["epoch"] == 1 and 0 <= metrics["val_top1"] <= 1
    assert (out / "log.csv").read_text().startswith("epoch,step,lr,train_loss")
    if importlib.util.find_spec("matplotlib") is not None:  # optional: no PNGs without it
        assert (out / "curves.png").stat().st_size > 0 and (out / "confusion.png").stat().st_size > 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the safe loader accepts it
    assert state["epoch"] == 1 and state["classes"] == ["left_fast", "rotate_cw"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    assert main(["eval", "--data", data, "--checkpoint", str(out / "checkpoint.pt"), "--workers", "0"]) == 0
    evaluated = json.loads((out / "eval_val.json").read_text())
    assert evaluated["val_top1"] == pytest.approx(metrics["val_top1"])
    assert "video top-1" in capsys.readouterr().out
    # The same command again: already finished, says so, changes nothing.
    assert main(["train", "--data", data, "--out", str(out), "--epochs", "1"] + TINY) == 0
    assert "already finished" in capsys.readouterr().out


def test_a_cpu_amp_run_says_what_it_gets(data, tmp_path, capsys, monkeypatch):
    """--amp on a CPU without a bfloat16 path (forced here): the second line of the run says
    that bfloat16 is slower than float32 there (the summary counts in words: "1 epoch")."""
    monkeypatch.setenv("R2P1D_CPU_KERNELS", "float32")
    assert main(["train", "--data", data, "--out", str(tmp_path / "amp"), "--epochs", "1", "--amp",
                 "--stop-after-steps", "1"] + TINY) == 3
    lines = capsys.readouterr().out.splitlines()
    assert "autocast bfloat16;" in lines[0] and "; 1 epoch, evaluated every epoch;" in lines[0], lines[0]
    assert lines[1].startswith("note: bfloat16 on the CPU: R2P1D_CPU_KERNELS=float32, so the CPU kernels compute "
                               "bfloat16 in float32"), lines


def test_interrupted_then_resumed_run_ends_with_the_same_weights(data, tmp_path, capsys):
    torch.manual_seed(123)
    train(_config(data, tmp_path / "straight", epochs=2))
    # 3 steps per epoch: stop after 4 steps (mid-epoch 2), then run the same command again.
    first = train(_config(data, tmp_path / "resumed", epochs=2, stop_after_steps=4))
    assert first["interrupted"] and first["step"] == 4
    train(_config(data, tmp_path / "resumed", epochs=2))
    assert "resuming from" in capsys.readouterr().out
    a = ckpt.load(str(tmp_path / "straight" / "checkpoint.pt"))
    b = ckpt.load(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    # The resumed run's last train_loss covers only the steps after the resume; the
    # evaluation of the final weights is the same.
    for key in ("val_loss", "val_top1", "val_video_top1"):
        assert a["history"][-1][key] == pytest.approx(b["history"][-1][key], rel=1e-9), key


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "r2p1d_ext.cli", "train", "--data", data, "--out", str(out),
           "--epochs", "50", "--checkpoint-every", "1"] + TINY
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output
    assert "checkpoint saved" in output
    state = ckpt.load(str(out / "checkpoint.pt"))
    assert state["step"] >= 1


def test_two_process_ddp_run_with_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "r2p1d_ext.cli", "train", "--data", data, "--out", str(out), "--epochs", "1"] + TINY
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 1
    state = ckpt.load(str(out / "checkpoint.pt"))
    # 6 videos / 2 ranks = 3 clips per rank: one batch of 2 (the incomplete last batch is dropped)
    assert len(state["rng"]) == 2 and state["step"] == 1


def _final_model(out):
    return ckpt.load(str(out / "checkpoint.pt"))["model"]


def _relative_distance(a, b):
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float((a[k] - b[k]).double().norm() ** 2) for k in keys)
    return (num / sum(float(b[k].double().norm() ** 2) for k in keys)) ** 0.5


def _torchrun_one_step(data, out, port, extra):
    """2 processes of 1 clip per step, stopped after 1 step (exit status 3, a checkpoint)."""
    args = list(TINY)
    args[args.index("--batch-size") + 1] = "1"  # per process: half the one-process run's 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "r2p1d_ext.cli", "train", "--data", data, "--out", str(out), "--epochs", "1",
           "--stop-after-steps", "1"] + args + extra
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert (out / "checkpoint.pt").exists(), res.stdout + res.stderr
    assert ckpt.load(str(out / "checkpoint.pt"))["step"] == 1


def test_sync_bn_two_processes_train_as_one_with_twice_the_batch(data, tmp_path):
    """`--sync-bn` on the CPU: 2 processes of 1 clip per step end a step with the weights of
    1 process of 2 clips per step over the same clips (the sampler gives rank r the clips
    r, r + 2, ... of the epoch's order; crops are a function of the clip, flips off). Without
    --sync-bn each process normalises its own clip and the weights differ. (One step: in
    float32 a later step can flip a ReLU whose input is within rounding of 0, and one flipped
    value moves the weights by more than 1e-4: measured 3.9e-4 after the second step on these
    clips as the PyAV reader decodes them, against < 1e-4 after the first.)"""
    one = tmp_path / "one"
    assert main(["train", "--data", data, "--out", str(one), "--epochs", "1", "--stop-after-steps", "1"]
                + TINY) == 3
    _torchrun_one_step(data, tmp_path / "sync", 29518, ["--sync-bn"])
    _torchrun_one_step(data, tmp_path / "plain", 29519, [])
    want = _final_model(one)
    assert _relative_distance(_final_model(tmp_path / "sync"), want) < 1e-4
    assert _relative_distance(_final_model(tmp_path / "plain"), want) > 1e-2


def test_user_mistakes_are_one_line_errors(data, capsys):
    """A mistake in the command is one line on stderr saying what to fix, exit status 2, no
    traceback; --debug raises it instead. --data given the split folder names the root."""
    train_dir = os.path.join(data, "train")
    assert main(["train", "--data", train_dir, "--out", "/nonexistent-run"] + TINY) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"the dataset root is the folder that holds train/ and val/, i.e. {data}" in err
    assert err.startswith("r2p1d train: error: expected a folder") and "--debug" in err
    with pytest.raises(FileNotFoundError, match="looks like a split itself"):
        main(["train", "--debug", "--data", train_dir, "--out", "/nonexistent-run"] + TINY)
    assert main(["eval", "--data", data, "--checkpoint", "/nonexistent/checkpoint.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r2p1d eval: error: no such checkpoint file: /nonexistent/checkpoint.pt (r2p1d train "
                          "writes checkpoint.pt into its --out folder)") and "Errno" not in err, err


def test_help_texts_say_every_option_and_its_default(capsys):
    import argparse

    from r2p1d_ext.train.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"make-synthetic", "prepare", "train", "eval", "predict", "check", "export", "bench"}
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"r2p1d {name} {action.option_strings[0]} has no help text"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("clips per step and process (default: 8)", "frames per clip (default: 16)",
                  "(default: r2plus1d_18)", "(default: 45)"):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--no-hflip turn off the random horizontal flips of training clips, which are on by default" in text
    assert "--no-progress hide the progress bars (shown by default)" in text
    # An on/off flag never shows "(default: True)": beside --no-x it reads as "off by default".
    for name, sub in commands.items():
        help_text = " ".join(sub.format_help().split())
        assert "(default: True)" not in help_text and "(default: False)" not in help_text, name


def test_epoch_line_counts_skipped_videos_and_shows_top5_only_where_it_says_something():
    from r2p1d_ext.train.reports import epoch_line

    row = {"epoch": 3, "train_loss": 0.5, "train_top1": 0.8, "val_loss": 0.6, "val_top1": 0.7, "val_top5": 1.0,
           "val_video_top1": 0.75, "skipped_videos": 2}
    three = epoch_line(row, 3)
    assert "top-5" not in three and three.endswith("video top-1 0.750 | 2 videos skipped"), three
    assert "top-5 1.000" in epoch_line(row, 7)


def test_epoch_sampler_shards_and_skips():
    shards = [EpochSampler(7, seed=1, rank=r, world=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    a, b = shards[0].indices(), shards[1].indices()
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7))
    shards[0].set_epoch(3, skip=2)
    assert shards[0].indices() == a[2:] and len(shards[0]) == 2
    s = EpochSampler(7, seed=1)
    s.set_epoch(4)
    assert s.indices() != a


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(TrainConfig("", "", epochs=10, warmup_epochs=1), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01
    g = lr_lambda(TrainConfig("", "", epochs=30, warmup_epochs=0, schedule="step", step_epochs=10), 5)
    assert g(0) == 1.0 and g(50) == pytest.approx(0.1) and g(100) == pytest.approx(0.01)


def test_atomic_checkpoint_keeps_the_old_one_on_failure(tmp_path):
    path = str(tmp_path / "c.pt")
    ckpt.save_atomic({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_atomic({"a": Unpicklable()}, path)
    assert torch.equal(ckpt.load(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
