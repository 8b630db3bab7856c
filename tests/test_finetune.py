"""Fine-tuning controls and test protocols: frozen stages (weights and BatchNorm statistics),
learning-rate groups, label smoothing and mixup/CutMix against F.cross_entropy, AdamW,
dropout, best.pt, 3-crop positions, clips per video, scale jitter, frame-rate resampling
and the kinetics-torchvision preset."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r2p1d_ext.cli import main
from r2p1d_ext.data import dataset as ds
from r2p1d_ext.models import build_model, load_model
from r2p1d_ext.models.presets import PRESETS
from r2p1d_ext.train import checkpoint as ckpt
from r2p1d_ext.train import finetune, mixing
from r2p1d_ext.train.config import TrainConfig
from r2p1d_ext.train.loop import train
from conftest import tiny_video_set

TINY = dict(arch="r2plus1d_10", batch_size=2, clip_len=4, short_side=32, crop_size=32, workers=0, eval_clips=2,
            hflip=False, progress=False, epochs=1, lr=0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_video_set(tmp_path_factory, "finetune")


def _bn_buffers(module):
    return {n: b.clone() for n, b in module.named_buffers() if "running" in n}


def test_frozen_stages_keep_weights_and_statistics(data, tmp_path):
    start = build_model("r2plus1d_10", 2).state_dict()
    torch.save(start, tmp_path / "start.pt")
    train(TrainConfig(data, str(tmp_path / "run"), init=str(tmp_path / "start.pt"), freeze_stages=2, **TINY))
    after = ckpt.load(str(tmp_path / "run" / "checkpoint.pt"))["model"]
    frozen = [k for k in start if k.split(".")[0] in ("stem", "layer1")]
    trained = [k for k in start if k.split(".")[0] in ("layer2", "fc") and k.endswith("weight")]
    assert frozen and trained
    for k in frozen:  # weights and running statistics (the fused blocks' inner BN too)
        assert torch.equal(start[k], after[k]), k
    assert any("stem.0.bn.running_mean" == k for k in frozen)
    for k in trained:
        assert not torch.equal(start[k], after[k]), k
    assert not torch.equal(start["layer2.0.conv1.1.running_mean"], after["layer2.0.conv1.1.running_mean"])


def test_freeze_helpers():
    model = build_model("r2plus1d_10", 3)
    finetune.freeze(model, 5)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    model.train()
    finetune.keep_frozen_in_eval(model, 5)
    assert not model.layer4.training and model.fc.training
    with pytest.raises(ValueError, match="from 0 to 5"):
        finetune.freeze(model, 6)


def test_learning_rate_groups():
    model = build_model("r2plus1d_10", 3)
    same = finetune.param_groups(model, 1e-4, 0.1, 0.1)
    assert [(g["lr"], g["weight_decay"]) for g in same] == [(0.1, 1e-4), (0.1, 0.0)]  # as before: two groups
    groups = finetune.param_groups(model, 1e-4, 0.01, 0.1)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.01, 1e-4), (0.1, 1e-4), (0.01, 0.0), (0.1, 0.0)]
    fc = {id(model.fc.weight), id(model.fc.bias)}
    assert {id(p) for g in groups if g["lr"] == 0.1 for p in g["params"]} == fc
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # The scheduler scales every group's base rate by the same factor.
    opt = finetune.make_optimizer("adamw", groups, 0.01, 0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert isinstance(opt, torch.optim.AdamW) and sched.get_last_lr() == [0.005, 0.05, 0.005, 0.05]


def test_label_smoothing_and_mixing_losses():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    for eps in (0.0, 0.1):
        want = F.cross_entropy(logits, labels, label_smoothing=eps, reduction="sum")
        assert torch.allclose(mixing.loss_sum(logits, labels, None, eps), want)
    clips = torch.randn(6, 3, 4, 8, 8, generator=g)
    same, targets = mixing.mix_batch(clips, labels, 5, 0.0, 0.0, np.random.default_rng(0))
    assert same is clips and targets is None
    mixed, targets = mixing.mix_batch(clips, labels, 5, 0.4, 0.0, np.random.default_rng(1))
    lam = float(targets[1, 1])  # clip 1 (label 1) mixed with clip 0 (label 0)
    assert torch.allclose(mixed, clips * lam + clips.roll(1, 0) * (1 - lam), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    cut, targets = mixing.mix_batch(clips, labels, 5, 0.0, 1.0, np.random.default_rng(2))
    kept = (cut == clips).all(dim=(0, 1, 2)).float().mean()  # the share of pixels not pasted over
    assert float(targets[1, 1]) == pytest.approx(float(kept))
    want = F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="sum")
    assert torch.allclose(mixing.loss_sum(logits, labels, targets, 0.1), want)


def test_fine_tuning_options_from_the_cli(data, tmp_path, capsys):
    out = tmp_path / "run"
    start = tmp_path / "tv.pt"
    torch.save(build_model("r2plus1d_10", 400).state_dict(), start)
    args = ["train", "--data", data, "--out", str(out), "--arch", "r2plus1d_10", "--batch-size", "2",
            "--clip-len", "4", "--short-side", "32", "--crop-size", "32", "--workers", "0", "--no-progress",
            "--epochs", "2", "--init", str(start), "--freeze-stages", "1", "--head-lr-mult", "10",
            "--dropout", "0.5", "--label-smoothing", "0.1", "--mixup", "0.2", "--cutmix", "1.0",
            "--optimizer", "adamw", "--lr", "1e-4", "--weight-decay", "0.05", "--scale-jitter", "32", "40",
            "--clips-per-video", "2", "--eval-crops", "3", "--eval-clips", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the classifier is new (400 classes there, 2 here); torchvision's Kinetics-400 weights were trained " \
           "with the preprocessing of --preset kinetics-torchvision" in printed
    state = ckpt.load(str(out / "checkpoint.pt"))
    assert state["config"]["optimizer"] == "adamw" and state["config"]["scale_jitter"] == (32, 40)
    assert state["scheduler"]["base_lrs"] == pytest.approx([1e-4, 1e-3, 1e-4, 1e-3])
    assert state["step"] == 2 * (12 // 2)  # 6 videos x 2 clips per video, batches of 2, 2 epochs
    best = torch.load(out / "best.pt", weights_only=True)
    history = json.loads((out / "metrics.json").read_text())["history"]
    top = max(h["val_video_top1"] for h in history)
    assert best["metrics"]["val_video_top1"] == top
    assert best["epoch"] == next(h["epoch"] for h in history if h["val_video_top1"] == top)
    assert load_model(str(out / "best.pt")).classes == ["left_fast", "rotate_cw"]


def test_three_crop_positions():
    # Landscape: left, centre, right; portrait: top, centre, bottom; the other axis centred.
    assert [ds.crop_origin(32, 60, 32, None, (p, 3)) for p in range(3)] == [(0, 0), (0, 14), (0, 28)]
    assert [ds.crop_origin(60, 40, 32, None, (p, 3)) for p in range(3)] == [(0, 4), (14, 4), (28, 4)]
    assert ds.crop_origin(40, 60, 32, None) == (4, 14)
    frames = np.arange(2 * 32 * 60 * 3, dtype=np.int64).reshape(2, 32, 60, 3).astype(np.uint8)
    right = ds.resize_crop(frames, 32, 32, position=(2, 3))
    assert np.array_equal(right, frames[:, :, 28:60])


def test_eval_items_cover_clips_and_crops(data):
    d = ds.VideoDataset(data, "val", clip_len=4, short_side=32, crop_size=24, clips_per_video=2, crops=3)
    assert len(d) == len(d.videos) * 6 and d.items_per_video == 6
    items = [d[i] for i in range(6)]
    assert {int(v) for _, _, v, _ in items} == {0}
    assert not torch.equal(items[0][0], items[2][0])  # crop 0 vs crop 2 of clip 0
    with pytest.raises(ValueError, match="for evaluation"):
        ds.VideoDataset(data, "train", clip_len=4, short_side=32, crop_size=24, crops=3)


def test_scale_jitter_and_clips_per_video(data):
    d = ds.VideoDataset(data, "train", clip_len=4, short_side=32, crop_size=24, clips_per_video=3, seed=0,
                        scale_jitter=(24, 48))
    assert len(d) == 3 * len(d.videos)
    sizes = set()
    for i in range(12):
        rng = np.random.default_rng((0, 0, i))
        rng.integers(0, 8)  # the clip start's draw comes first
        sizes.add(int(rng.integers(24, 49)))
        assert d[i][0].shape == (4, 24, 24, 3)
    assert len(sizes) > 3


def test_resampling_to_a_frame_rate():
    # torchvision's resampling: output frame j is source frame floor(j * source fps / fps).
    assert ds.source_indices(0, 4, 1, 100, 2.0) == [0, 2, 4, 6]
    assert ds.source_indices(3, 3, 2, 50, 25 / 15) == [int(3 * 25 / 15), int(5 * 25 / 15), int(7 * 25 / 15)]
    assert ds.resampled_frames(100, 25 / 15) == 60
    assert ds.source_indices(5, 3, 1, 12, 1.0) == [5, 6, 7]


def test_fps_dataset_reads_the_resampled_frames(data):
    # The synthetic videos are 25 fps, 8 frames: at 12.5 fps every second frame, 4 frames.
    d = ds.VideoDataset(data, "val", clip_len=4, short_side=32, crop_size=32, fps=12.5)
    assert d.steps[0] == 2.0 and d.timeline(0) == 4
    from r2p1d_ext.data.video import read_frames_at
    clip = d[0][0].numpy()
    want = ds.resize_crop(read_frames_at(d.videos[0][0], [0, 2, 4, 6]), 32, 32)
    assert np.array_equal(clip, want)


def test_kinetics_torchvision_preset(data, tmp_path):
    p = PRESETS["kinetics-torchvision"]
    assert (p["fps"], p["resize"], p["crop_size"], p["clip_len"], p["clips_per_video"]) == (15.0, (128, 171), 112, 16,
                                                                                             5)
    cfg = TrainConfig.from_preset("kinetics-torchvision", data, str(tmp_path), clip_len=4)
    assert cfg.resize == (128, 171) and cfg.fps == 15.0 and cfg.clip_len == 4 and cfg.preset == "kinetics-torchvision"
    # torchvision weights load with the preset's preprocessing.
    weights = tmp_path / "tv.pt"
    torch.save(build_model("r2plus1d_10", 2).state_dict(), weights)
    loaded = load_model(str(weights), arch="r2plus1d_10", labels=["a", "b"])
    assert loaded.config["resize"] == (128, 171) and loaded.config["fps"] == 15.0
    # The command line: the preset's values as defaults, given options win.
    out = tmp_path / "run"
    assert main(["train", "--data", data, "--out", str(out), "--preset", "kinetics-torchvision", "--arch",
                 "r2plus1d_10", "--clip-len", "4", "--crop-size", "32", "--resize", "32", "48", "--batch-size", "2",
                 "--workers", "0", "--no-progress", "--stop-after-steps", "1", "--no-hflip"]) == 3
    config = ckpt.load(str(out / "checkpoint.pt"))["config"]
    assert (config["preset"], config["fps"], config["clips_per_video"], config["resize"], config["clip_len"]) == \
        ("kinetics-torchvision", 15.0, 5, (32, 48), 4)


def test_step_schedule_milestones(tmp_path):
    from r2p1d_ext.train.loop import lr_lambda
    cfg = TrainConfig("", "", schedule="step", milestones=(2, 3), warmup_epochs=0, gamma=0.1)
    f = lr_lambda(cfg, 10)  # 10 steps per epoch: decays at steps 20 and 30
    assert [round(f(s), 6) for s in (0, 19, 20, 29, 30, 99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


def test_eval_runs_torchvision_weights_with_their_preset(data, tmp_path, capsys):
    weights, labels = tmp_path / "tv.pt", tmp_path / "labels.txt"
    torch.save(build_model("r2plus1d_10", 2).state_dict(), weights)
    labels.write_text("left_fast\nrotate_cw\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", data, "--weights", str(weights), "--arch", "r2plus1d_10", "--labels", str(labels),
                 "--workers", "0", "--eval-clips", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["epoch"] is None and result["val_videos"] == 4 and result["clips_per_video"] == 1
    assert "4 videos x 1 clips x 1 crops" in capsys.readouterr().out
    assert main(["eval", "--data", data, "--weights", str(tmp_path / "none.pt"), "--arch", "r2plus1d_10",
                 "--labels", str(labels)]) == 2
    assert "no such weights file" in capsys.readouterr().err
