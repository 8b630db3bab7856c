"""Training at scale, proved on the CPU with gloo under torchrun (NCCL runs the same
collectives): every rank takes every step (an empty batch included), one decision to stop
(SIGTERM to torchrun's agent), elastic restarts after a kill -9 wherever it lands, two
agents as two nodes without a shared --out, sharded evaluation equal to one process's,
the step log, reports at 400 classes, the loader's settings, and the mistakes at resume."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from r2p1d_ext.cli import main
from r2p1d_ext.data import manifest
from r2p1d_ext.data.dataset import VideoDataset
from r2p1d_ext.data.synthetic import make_synthetic
from r2p1d_ext.data.video import decoder_threads, one_thread_per_worker
from r2p1d_ext.models import build_model
from r2p1d_ext.train import checkpoint as ckpt
from r2p1d_ext.train.config import default_workers
from r2p1d_ext.train.distributed import EpochSampler, VideoBatches
from r2p1d_ext.train.evaluation import metrics_of, score_clips
from r2p1d_ext.train.reports import LABELLED_CLASSES, RunReports, most_confused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["left_fast", "up"]
# 16 training videos: 2 processes of 2 clips per step take 4 steps an epoch.
ARGS = ["--arch", "r2plus1d_10", "--batch-size", "2", "--clip-len", "4", "--short-side", "32", "--crop-size", "32",
        "--workers", "0", "--eval-clips", "2", "--no-hflip", "--no-progress", "--lr", "0.02"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scale"))
    make_synthetic(root, videos_per_class=(8, 3), classes=CLASSES, frames=8, size=(32, 40), progress=False)
    return root


def _torchrun(args, out, nproc=2, env=None, restarts=0, timeout=300, nodes=None):
    """`r2p1d train` under torchrun (standalone, or as one of `nodes` = (count, endpoint)
    agents); returns the finished process."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--max-restarts", str(restarts)]
    launcher += (["--nnodes", str(nodes[0]), "--rdzv-backend", "c10d", "--rdzv-endpoint", nodes[1],
                  "--rdzv-id", "r2p1d-test"] if nodes else ["--standalone"])
    cmd = launcher + ["-m", "r2p1d_ext.cli", "train", "--out", str(out)] + args
    # A store of its own for every start of the workers (docs/training.md): with torchrun's
    # shared one a restart may read the previous start's addresses and fail to connect.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env), timeout


def _run(args, out, **kw):
    proc, timeout = _torchrun(args, out, **kw)
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted 2-process run of 2 epochs: the weights and history the interrupted
    runs must end with (how often a run checkpoints changes neither)."""
    out = tmp_path_factory.mktemp("straight")
    code, output = _run(["--data", data, "--epochs", "2"] + ARGS, out)
    assert code == 0, output
    return out


def _weights(out):
    return ckpt.load(str(out / "checkpoint.pt"))["model"]


def _same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _history(out):
    return ckpt.load(str(out / "checkpoint.pt"))["history"]


# ------------------------------------------------------------------ every rank takes every step
def test_a_rank_with_an_empty_batch_still_takes_the_step(data, tmp_path):
    """Both clips of rank 1's second batch fail to decode (their files are garbage that the
    manifest vouches for, so they fail at decoding, not at start-up). The 2-process run
    finishes, every checkpoint's check that the ranks hold the same parameters passes, and in
    float64 with --sync-bn its weights are those of one process of 4 clips per step over the
    same good clips (the sampler gives rank r the clips r, r + 2, ... of the epoch's order)."""
    root = tmp_path / "data"
    shutil.copytree(data, root)
    train_set = VideoDataset(str(root), "train", clip_len=4, short_side=32, crop_size=32)
    order = EpochSampler(len(train_set), seed=0, rank=1, world=2).indices()
    bad = order[2:4]  # rank 1's batch 2 of epoch 1
    rows = []
    for index in bad:
        path = train_set.videos[index][0]
        with open(path, "wb") as f:
            f.write(os.urandom(4000))
        rel = os.path.relpath(path, root)
        rows.append({"output": rel, "source": rel, "frames": 8, "fps": 25.0, "width": 40, "height": 32,
                     "bytes": 4000})
    manifest.write(manifest.path_in(str(root)), {}, rows, [], True, str(root))
    common = ["--data", str(root), "--epochs", "1", "--dtype", "float64", "--sync-bn", "--log-every", "1"] + ARGS
    code, output = _run(common, tmp_path / "two")
    assert code == 0, output
    assert "2 videos skipped" in output, output
    one = list(common)
    one[one.index("--batch-size") + 1] = "4"
    assert main(["train", "--out", str(tmp_path / "one")] + one) == 0
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert all(a[k].dtype == torch.float64 for k in a if a[k].is_floating_point())
    worst = max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-300)) for k in a if a[k].is_floating_point())
    assert worst < 1e-10, worst
    # The run's evaluation, sharded over the 2 ranks, is one process's to the bit.
    report = tmp_path / "eval.json"
    assert main(["eval", "--data", str(root), "--checkpoint", str(tmp_path / "two" / "checkpoint.pt"),
                 "--batch-size", "2", "--workers", "0", "--out", str(report)]) == 0
    alone, sharded = json.loads(report.read_text()), _history(tmp_path / "two")[-1]
    for key in ("val_loss", "val_top1", "val_top5", "val_video_top1", "val_video_top5", "val_mean_class_acc"):
        assert alone[key] == sharded[key], key
    # The step with an empty batch on rank 1 still trained on rank 0's two clips: 4 steps.
    steps = list(csv.DictReader(open(tmp_path / "two" / "steps.csv")))
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    assert all(0 <= float(r["data_wait"]) <= 1 and float(r["clips_per_s"]) > 0 for r in steps)


# ------------------------------------------------------------------ one decision to stop
def _children(pid):
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_sigterm_to_the_agent_stops_every_rank_at_one_step_and_resumes(data, straight, tmp_path):
    common = ["--data", data, "--epochs", "2", "--checkpoint-every", "1"] + ARGS
    out = tmp_path / "stopped"
    proc, _ = _torchrun(common, out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.pt").exists() and ckpt.load(str(out / "checkpoint.pt"))["step"] >= 2:
            break
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)  # every process exits within a minute
    assert "stopped at epoch" in output and "checkpoint saved" in output, output
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", pid
    state = ckpt.load(str(out / "checkpoint.pt"))
    assert 2 <= state["step"] < 8 and state["world"] == 2
    code, output = _run(common, out)
    assert code == 0 and "resuming from" in output, output
    assert _same_weights(_weights(out), _weights(straight))
    assert [h["epoch"] for h in _history(out)] == [1, 2]


def test_a_nan_loss_on_one_rank_stops_every_rank_before_the_update(data, tmp_path):
    """Rank 1's loss turns NaN at step 3: both ranks stop there, neither updates its weights,
    and the checkpoint of step 2 is the last good state."""
    out = tmp_path / "nan"
    code, output = _run(["--data", data, "--epochs", "2", "--checkpoint-every", "1"] + ARGS, out,
                        env={"R2P1D_TEST_FAULT": "1:nan-loss:3"})
    assert code != 0
    for rank in (0, 1):
        assert f"[rank{rank}]: FloatingPointError: non-finite training loss (nan) at epoch 1, step 3" in output, output
    assert ckpt.load(str(out / "checkpoint.pt"))["step"] == 2


# ------------------------------------------------------------------ elastic restarts
@pytest.mark.parametrize("kill", ["1:kill-after-step:3", "1:kill-after-step:4", "0:kill-at-epoch-end:1"])
def test_a_worker_killed_anywhere_restarts_and_the_run_ends_as_if_not(data, straight, tmp_path, kill):
    """kill -9 of one worker (R2P1D_TEST_FAULT: after step 3, between two checkpoints; after
    step 4, just after one, at the end of epoch 1; after evaluating epoch 1, before its
    checkpoint, where a resumed run used to close the epoch again with empty sums): torchrun
    restarts the workers, they resume from the last checkpoint by themselves, and the run
    ends with the weights and the history of an uninterrupted run, each epoch once."""
    common = ["--data", data, "--epochs", "2", "--checkpoint-every", "2"] + ARGS
    out = tmp_path / "killed"
    code, output = _run(common, out, env={"R2P1D_TEST_FAULT": kill}, restarts=2)
    assert code == 0, output
    assert "resuming from" in output, output
    assert _same_weights(_weights(out), _weights(straight))
    a, b = _history(out), _history(straight)
    assert [h["epoch"] for h in a] == [1, 2]
    for got, want in zip(a, b):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_video_top1", "step"):
            assert got[key] == want[key], (key, got, want)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


# ------------------------------------------------------------------ nodes without a shared --out
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args, outs):
    """Two torchrun agents of one process each, as two nodes, each with its own --out."""
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = [_torchrun(args, out, nproc=1, nodes=(2, endpoint))[0] for out in outs]
    return [(p.wait(timeout=300), p.stdout.read()) for p in procs]


def test_two_nodes_without_a_shared_out_resume_from_the_one_checkpoint(data, straight, tmp_path):
    """--nnodes 2 with c10d rendezvous, each agent with its own run folder: rank 0 writes the
    checkpoint into its own; at the resume the node that has it reads it and every rank gets
    it, whichever node is rank 0 this time; the run ends as an uninterrupted one."""
    common = ["--data", data, "--epochs", "2"] + ARGS
    outs = [tmp_path / "node_a", tmp_path / "node_b"]
    first = _two_nodes(common + ["--stop-after-steps", "3"], outs)
    written = [o for o in outs if (o / "checkpoint.pt").exists()]
    assert len(written) == 1 and ckpt.load(str(written[0] / "checkpoint.pt"))["step"] == 3, first
    second = _two_nodes(common, outs)
    assert all(code == 0 for code, _ in second), second
    assert any("resuming from" in text for _, text in second), second
    final = max((o for o in outs if (o / "checkpoint.pt").exists()),
                key=lambda o: ckpt.load(str(o / "checkpoint.pt"))["step"])
    assert _same_weights(_weights(final), _weights(straight))


# ------------------------------------------------------------------ resume mistakes
def test_another_world_size_at_resume_and_a_busy_folder(data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", data, "--epochs", "2"] + ARGS
    code, output = _run(common + ["--stop-after-steps", "2"], out)
    assert code != 0 and "stopped at epoch 1, step 2" in output, output
    assert main(["train", "--out", str(out)] + common) == 2
    err = capsys.readouterr().err
    assert "was saved 2 batches into epoch 1 by 2 processes, this run has 1: resume it with 2" in err, err
    assert err.count("\n") == 1
    # A second run into a folder another live run holds: one line, exit status 1.
    holder = subprocess.Popen([sys.executable, "-c", "\n".join([
        "import sys, time",
        "from r2p1d_ext._io import exclusive",
        f"with exclusive({str(out / '.train.lock')!r}, RuntimeError, inherited=False):",
        "    print('held', flush=True); time.sleep(60)"])], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        assert main(["train", "--out", str(out)] + common) == 1
        err = capsys.readouterr().err
        assert f"another r2p1d train (process {holder.pid}) is using the run folder {out}" in err, err
    finally:
        holder.kill()
        holder.wait()


def test_an_epoch_end_checkpoint_resumes_with_another_world_size(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, output = _run(["--data", data, "--epochs", "1"] + ARGS, out)
    assert code == 0, output
    assert main(["train", "--out", str(out), "--data", data, "--epochs", "2"] + ARGS) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "saved by 2 processes, now 1" in printed, printed
    assert [h["epoch"] for h in _history(out)] == [1, 2]


# ------------------------------------------------------------------ evaluation sharded over the ranks
def test_sharded_evaluation_equals_one_process_exactly(data):
    torch.manual_seed(0)
    model = build_model("r2plus1d_10", 2).eval()
    val = VideoDataset(data, "val", clip_len=4, short_side=32, crop_size=32, clips_per_video=3)

    def share(rank, world, batch):
        loader = DataLoader(val, batch_sampler=VideoBatches(len(val.videos), 3, batch, rank, world))
        return score_clips(model, loader, torch.device("cpu"))

    for batch in (3, 7):  # 1 and 2 videos per batch
        one = metrics_of([share(0, 1, batch)], 2)
        for world in (2, 3):
            assert metrics_of([share(r, world, batch) for r in range(world)], 2) == one, (batch, world)
    assert one["val_videos"] == 6 and set(one) >= {"val_video_top5", "val_mean_class_acc"}
    # Every video on exactly one rank, all its clips in one batch.
    shares = [list(VideoBatches(6, 3, 7, r, 3)) for r in range(3)]
    clips = sorted(i for s in shares for b in s for i in b)
    assert clips == list(range(18)) and all(len(b) % 3 == 0 for s in shares for b in s)


def test_mean_class_accuracy_and_video_top5():
    # Video scores (already averaged): class 0 has 2 videos (one right), class 1 one (wrong).
    parts = [{"clips": [(0, 0.5, True, True), (1, 1.0, False, True), (2, 2.0, False, False)],
              "videos": {0: [0, torch.tensor([0.9, 0.1]), 1], 1: [0, torch.tensor([0.2, 0.8]), 1],
                         2: [1, torch.tensor([0.7, 0.3]), 1]}, "failed": set()}]
    m = metrics_of(parts, 2)
    assert m["val_video_top1"] == pytest.approx(1 / 3) and m["val_mean_class_acc"] == pytest.approx(0.25)
    assert m["val_video_top5"] == 1.0 and m["confusion"] == [[1, 1], [1, 0]]


# ------------------------------------------------------------------ reports and the loader
def test_reports_at_400_classes_stay_small(tmp_path):
    from matplotlib.image import imread

    classes = [f"class {i:03d} with a long name" for i in range(400)]
    rng = np.random.default_rng(0)
    confusion = rng.poisson(0.05, (400, 400)) + np.diag(rng.integers(20, 50, 400))
    confusion[7, 9] = 30
    reports = RunReports(str(tmp_path), classes)
    row = {"epoch": 1, "step": 10, "lr": 0.1, "train_loss": 1.0, "train_top1": 0.5, "val_loss": 1.1,
           "val_top1": 0.4, "val_top5": 0.7, "val_video_top1": 0.45, "skipped_videos": 0}
    doc = reports.epoch([row], confusion.tolist())
    for png in ("confusion.png", "curves.png"):
        h, w = imread(str(tmp_path / png)).shape[:2]
        assert max(h, w) <= 2000, (png, h, w)
    assert doc["most_confused"][0] == {"true": classes[7], "predicted": classes[9], "videos": 30}
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion"][7][9] == 30
    assert LABELLED_CLASSES < 400 and most_confused(np.eye(3, dtype=int), ["a", "b", "c"]) == []


class _Threads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2
        return torch.tensor([cv2.getNumThreads(), decoder_threads(), torch.get_num_threads()])


def test_each_loader_worker_decodes_with_one_thread():
    got = next(iter(DataLoader(_Threads(), batch_size=2, num_workers=1, worker_init_fn=one_thread_per_worker)))
    assert got.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert default_workers(local_world=8, cores=16) == 1 and default_workers(1, cores=16) == 15
    assert default_workers(4, cores=2) == 1 and default_workers(1, cores=64) == 16


def test_the_summary_names_the_loader_and_the_log(data, tmp_path, capsys):
    assert main(["train", "--data", data, "--out", str(tmp_path / "r"), "--epochs", "1", "--stop-after-steps", "1",
                 "--log-every", "7", "--eval-every", "2"] + ARGS + ["--workers", "1"]) == 3
    first = capsys.readouterr().out.splitlines()[0]
    assert "1 loader worker per process, 2 batches ahead each" in first, first
    assert "a steps.csv row every 7 steps" in first and "evaluated every 2 epochs and after the last" in first
