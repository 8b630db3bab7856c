"""Synchronized BatchNorm (r2p1d_ext/sync_bn.py) with 2 and 3 gloo processes on the CPU: a
fused block and a whole fused r2plus1d_10, their BatchNorm layers converted with the
standard ``nn.SyncBatchNorm.convert_sync_batchnorm``, each process holding an uneven slice
of the batch (one of them none), give the outputs, input gradients, parameter gradients
(summed over the processes) and running statistics of one process running the whole batch.
Without the conversion the same comparison fails (the test can fail)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import sync_bn_worker as worker
from conftest import assert_close
from r2p1d_ext import sync_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _run(case, world, tmp_path):
    init = tmp_path / f"init-{case}-{world}"
    outs = [tmp_path / f"{case}-{world}-{r}.pt" for r in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "sync_bn_worker.py"), case, str(world),
                               str(r), str(init), str(outs[r])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [torch.load(o, weights_only=True) for o in outs]


def _reference(case):
    model, x, grad = worker.build(case)
    return worker.step(model, x, grad)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", list(worker.CASES))
def test_processes_equal_one_process_on_the_whole_batch(case, world, tmp_path):
    dtype = worker.CASES[case][1]
    tol = TOL[dtype]
    ranks = _run(case, world, tmp_path)
    ref = _reference(case)
    assert_close(torch.cat([r["out"] for r in ranks]), ref["out"], tol, f"{case} output")
    assert_close(torch.cat([r["grad_x"] for r in ranks]), ref["grad_x"], tol, f"{case} input gradient")
    # A gradient that is zero in exact arithmetic (a conv bias ahead of BatchNorm) is rounding
    # on both sides: errors are measured against at least 1% of the largest parameter gradient.
    scale = max(g.norm() for g in ref["grads"].values())
    for name, want in ref["grads"].items():
        got = sum(r["grads"][name] for r in ranks)
        err = (got - want).norm() / max(want.norm(), 1e-2 * scale)
        assert err <= tol, f"{case} gradient of {name}: relative error {err:.3g} > {tol:.1g}"
    for rank, r in enumerate(ranks):
        for name, want in ref["buffers"].items():
            got = r["buffers"][name]
            if want.is_floating_point():
                assert_close(got, want, tol, f"{case} rank {rank} buffer {name}")
            else:
                assert torch.equal(got, want), f"{case} rank {rank} buffer {name}"


def test_per_process_statistics_differ(tmp_path, monkeypatch):
    """The comparison above can fail: without synchronization (no conversion), the first
    rank's slice alone gives other outputs than the whole batch's statistics."""
    model, x, grad = worker.build("block-f64")
    alone = worker.step(model, x[:4], grad[:4])
    ref = _reference("block-f64")
    with pytest.raises(AssertionError):
        assert_close(alone["out"], ref["out"][:4], 1e-6)


def test_no_collective_in_eval_or_one_process():
    """A SyncBatchNorm in eval, or with torch.distributed not initialized, synchronizes
    nothing; a plain BatchNorm3d never does."""
    bn = nn.SyncBatchNorm(4)
    assert sync_bn.process_group(bn) is None  # not initialized
    assert sync_bn.process_group(nn.BatchNorm3d(4)) is None
    assert sync_bn.process_group(bn.eval()) is None


@pytest.mark.parametrize("convert", ["torch", "library"])
def test_fuse_keeps_synchronized_batchnorm_and_unfuse_gives_it_back(convert):
    """fuse() of a torchvision r2plus1d_18 whose BatchNorm layers were converted (torch's
    call, or the library's CPU one) keeps each one, the fused blocks' included, as it was
    (the same objects, in place); unfuse() gives the same layers back."""
    tv = pytest.importorskip("torchvision")
    from r2p1d_ext import SpatioTemporalConv, fuse, unfuse

    model = tv.models.video.r2plus1d_18(num_classes=4)
    kind = nn.SyncBatchNorm if convert == "torch" else sync_bn.SyncBatchNorm3d
    model = (nn.SyncBatchNorm.convert_sync_batchnorm(model) if convert == "torch"
             else sync_bn.convert_sync_batchnorm(model))
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and all(type(m) is kind for m in layers)
    fused = fuse(model, inplace=True)
    blocks = [m for m in fused.modules() if isinstance(m, SpatioTemporalConv)]
    assert len(blocks) == 17 and all(type(b.bn) is kind for b in blocks)
    assert [id(m) for m in fused.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == \
        [id(m) for m in layers]
    back = unfuse(fused, inplace=True)
    assert not any(isinstance(m, SpatioTemporalConv) for m in back.modules())
    assert [id(m) for m in back.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == \
        [id(m) for m in layers]


def test_library_conversion_keeps_parameters_buffers_and_state_dict():
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.ReLU())
    model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    out = sync_bn.convert_sync_batchnorm(model)
    assert type(out[1]) is sync_bn.SyncBatchNorm3d and out[1].weight is weight
    assert out.state_dict().keys() == before.keys()
    assert all(torch.equal(out.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(2, 3, 2, 4, 4)
    # No process group: exactly nn.BatchNorm3d.
    ref = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.ReLU())
    ref.load_state_dict(before)
    assert torch.equal(out(x), ref(x))
