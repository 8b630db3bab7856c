"""Whole-network inference fusion (docs/inference.md): fused_eval's residual and ReLU, BatchNorm
folded after a block and into the shortcut (r2p1d_ext/conv_bn.py, folding.py), the folded-weight
cache, and where the folding must not apply. Reference: the same modules run one by one
in float64, or plain PyTorch ops."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.library import opcheck
from torch.utils._python_dispatch import TorchDispatchMode

import r2p1d_ext
from r2p1d_ext import SpatioTemporalConv, folding, models, ops, reference

from conftest import DEVICES, assert_close, randomize_all_bn

OPS = torch.ops.r2p1d


def _args(device="cpu", dtype=torch.float64, n=2, c=5, m=6, o=7, t=5, h=9, k=3, stride=(1, 1, 1),
          padding=(1, 1, 1), kt=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).to(device)
    x = r(n, c, t, h, h)
    ws, bs, wt, bt = r(m, c, 1, k, k), r(m), r(o, m, kt, 1, 1), r(o)
    to = (t + 2 * padding[0] - kt) // stride[0] + 1
    ho = (h + 2 * padding[1] - k) // stride[1] + 1
    return x, ws, bs, wt, bt, list(stride), list(padding), r(n, o, to, ho, ho)


# ---------------------------------------------------------------------------- the op
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_residual,relu", [(True, True), (True, False), (False, True)])
def test_residual_and_relu_match_pytorch(device, with_residual, relu):
    x, ws, bs, wt, bt, stride, padding, res = _args(device)
    res = res if with_residual else None
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu)
    assert_close(out, reference.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu), 1e-12, "out")
    if relu:
        assert (out >= 0).all()


# Temporal padding past the kernel (kt=1, pt=1): the first and last output steps read only
# padding, so they are the bias, then the residual and the ReLU (output_frame's no-tap
# branch); a strided conv with 7x7 frames: the im2col path in frame groups; 56x56 frames:
# one frame per GEMM; one 7x7 frame (one output frame: its GEMM on all threads), with 256
# channels: the narrow, deep GEMM run transposed.
@pytest.mark.parametrize("kw", [dict(kt=1, padding=(1, 1, 1)), dict(stride=(2, 2, 2), h=14, t=6),
                                dict(h=56, t=3, n=1, c=3, k=7, stride=(1, 2, 2), padding=(1, 3, 3)),
                                dict(h=7, t=1, n=1, c=16, m=24), dict(h=7, t=1, n=1, c=256, m=24)])
def test_residual_relu_on_every_kernel_path(kw):
    x, ws, bs, wt, bt, stride, padding, res = _args(dtype=torch.float32, **kw)
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    want = reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), stride, padding, res.double(), True)
    assert_close(out, want, 1e-5, "out")


@pytest.mark.parametrize("kt", [3, 1])
def test_residual_in_runs_of_a_large_sample(kt):
    """A sample larger than the kernel's unit budget is computed in runs of output steps
    (kt=1 with padding 1: runs of steps that read only padding)."""
    x, ws, bs, wt, bt, stride, padding, res = _args(dtype=torch.float32, n=1, c=8, m=64, o=8, t=20, h=112, kt=kt)
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    want = reference.fused_eval(*(t.double() for t in (x, ws, bs, wt, bt)), stride, padding, res.double(), True)
    assert_close(out, want, 1e-5, "out")


@given(n=st.integers(1, 3), c=st.integers(1, 6), m=st.integers(1, 9), o=st.integers(1, 6),
       t=st.integers(1, 6), h=st.integers(3, 12), kt=st.sampled_from([1, 3]),
       st_=st.integers(1, 2), ss=st.integers(1, 2), pt=st.integers(0, 1), relu=st.booleans())
def test_residual_relu_random_shapes(n, c, m, o, t, h, kt, st_, ss, pt, relu):
    if t + 2 * pt < kt:
        return
    x, ws, bs, wt, bt, stride, padding, res = _args(
        n=n, c=c, m=m, o=o, t=t, h=h, kt=kt, stride=(st_, ss, ss), padding=(pt, 1, 1))
    out = ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu)
    assert_close(out, reference.fused_eval(x, ws, bs, wt, bt, stride, padding, res, relu), 1e-12, "out")


def test_gradcheck_with_residual_and_relu():
    x, ws, bs, wt, bt, stride, padding, res = _args(n=1, c=2, m=3, o=2, t=3, h=5)
    inputs = [t.requires_grad_() for t in (x, ws, bs, wt, bt, res)]
    fn = lambda x, ws, bs, wt, bt, res: ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res, True)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_residual_and_relu(device):
    x, ws, bs, wt, bt, stride, padding, res = _args(device, dtype=torch.float32)
    for t in (x, ws, bs, wt, bt, res):
        t.requires_grad_()
    opcheck(OPS.fused_eval.default, (x, ws, bs, wt, bt, stride, padding, res, True))
    opcheck(OPS.fused_eval.default, (x, ws, bs, wt, bt, stride, padding), {"relu": True})


def test_bad_residual_is_named():
    x, ws, bs, wt, bt, stride, padding, res = _args()
    with pytest.raises(ValueError, match=r"residual of the output's shape \[2, 7, 5, 9, 9\].*\[2, 7, 5, 9, 8\]"):
        ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res[..., :8], True)
    with pytest.raises(ValueError, match="residual of dtype Double"):
        ops.fused_eval(x, ws, bs, wt, bt, stride, padding, res.float(), True)
    with pytest.raises(ValueError, match="residual of the output's shape"):  # the fake kernel too
        short = res[..., :8].contiguous()
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = [mode.from_tensor(t) for t in (x, ws, bs, wt, bt, short)]
            OPS.fused_eval(*fake[:5], stride, padding, fake[5], True)


# ---------------------------------------------------------------------------- networks
class _AtenOps(TorchDispatchMode):
    """The aten ops a forward runs."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _unfused_twin(model):
    """The same network with every module run on its own (unfuse: plain PyTorch)."""
    return r2p1d_ext.unfuse(model)


@pytest.mark.parametrize("build", [lambda: models.r2plus1d_10(num_classes=5),
                                   lambda: models.R2Plus1DClassifier(5, [1, 1, 1, 1])])
def test_eval_network_equals_its_modules_one_by_one(build):
    torch.manual_seed(0)
    model = randomize_all_bn(build()).eval()
    twin = _unfused_twin(model).double()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        model(x)  # folds the weights (with adds and multiplies of their own), once
        with _AtenOps() as seen:
            out = model(x)
    assert_close(out, twin(x.double()), 1e-5, "logits")
    # folded: no BatchNorm, residual add or ReLU left as ops of their own
    assert not seen.names & {"native_batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_",
                             "add", "add_"}, seen.names


def test_fused_torchvision_model_folds_and_unfuses_back():
    tv_video = pytest.importorskip("torchvision.models.video")
    torch.manual_seed(0)
    tv = randomize_all_bn(tv_video.r2plus1d_18(num_classes=5)).eval()
    fused = r2p1d_ext.fuse(tv)
    assert isinstance(fused.layer2[0], models.BasicBlock)
    assert isinstance(fused.layer2[0].downsample, models.ConvBN) and isinstance(fused.stem, models.ConvBN)
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert_close(fused(x), copy.deepcopy(tv).double()(x.double()), 1e-5, "logits")
        back = r2p1d_ext.unfuse(fused)
        assert type(back.layer2[0]) is tv_video.resnet.BasicBlock
        assert type(back.layer2[0].downsample) is nn.Sequential and type(back.stem) is nn.Sequential
        assert list(back.state_dict()) == list(tv.state_dict())
        assert_close(back(x), tv(x), 1e-6, "unfused logits")


def test_unfused_network_still_scripts():
    """The folding forward is Python only: TorchScript compiles the plain one (torchvision's
    layout; the paper layout's blocks without a shortcut never scripted: they lack its
    modules)."""
    torch.manual_seed(0)
    model = r2p1d_ext.unfuse(randomize_all_bn(models.r2plus1d_10(num_classes=5))).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert_close(torch.jit.script(model)(x), model(x), 1e-6, "scripted")


def test_training_mode_keeps_batchnorm_separate():
    torch.manual_seed(0)
    model = models.r2plus1d_10(num_classes=5).train()
    twin = models.r2plus1d_10(num_classes=5, conv=reference.SpatioTemporalConv).train()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    assert_close(model(x), twin(x), 1e-4, "train logits")
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name


def test_batchnorm_without_running_stats_is_not_folded():
    torch.manual_seed(0)
    block = models.ConvBN(SpatioTemporalConv(4, 6, 3, padding=1), nn.BatchNorm3d(6, track_running_stats=False),
                           nn.ReLU()).eval()
    x = torch.randn(2, 4, 3, 8, 8)
    with torch.no_grad():
        want = F.relu(F.batch_norm(block[0](x), None, None, block[1].weight, block[1].bias, True))
        assert_close(block(x), want, 1e-5, "batch-statistics BatchNorm")


def test_batchnorm_of_the_wrong_size_still_raises():
    """A one-feature BatchNorm after a 6-channel block: the fold would broadcast it."""
    block = models.ConvBN(SpatioTemporalConv(4, 6, 3, padding=1), nn.BatchNorm3d(1)).eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        block(torch.randn(1, 4, 3, 8, 8))


def test_hooks_are_honoured():
    """A hook on a module the fold would skip: the modules run one by one, hooks called."""
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=5)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        want = model(x)
        seen = []
        handle = model.layer1[0].conv2[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
        got = model(x)
        handle.remove()
    assert seen == [torch.Size([1, 64, 4, 16, 16])]
    assert_close(got, want, 1e-5, "logits with a hook")


def test_eval_gradients_reach_every_parameter():
    """With autograd in eval the fold is part of the graph (nothing cached): gradients as
    the modules one by one give them."""
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=3)).double().eval()
    twin = _unfused_twin(model)
    x = torch.randn(1, 3, 4, 16, 16, dtype=torch.float64)
    params, twin_params = list(model.parameters()), list(twin.parameters())
    g = torch.autograd.grad(model(x).sum(), params)
    g_ref = torch.autograd.grad(twin(x).sum(), twin_params)
    for (name, _), a, b in zip(model.named_parameters(), g, g_ref):
        assert_close(a, b, 1e-8, f"grad {name}")


def test_autocast_bfloat16_on_the_cpu():
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=5)).eval()
    twin = _unfused_twin(model)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
    with torch.no_grad():
        want = twin.double()(x.double())
    assert got.dtype == torch.bfloat16
    assert_close(got, want, 5e-2, "bf16 logits")


# ---------------------------------------------------------------------------- the cache
def _counting_folds(monkeypatch):
    calls = []
    real = folding.fold_after
    monkeypatch.setattr(folding, "fold_after", lambda *a: calls.append(1) or real(*a))
    return calls


def test_folded_weights_are_reused_until_a_parameter_changes(monkeypatch):
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=5)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    calls = _counting_folds(monkeypatch)
    with torch.no_grad():
        first = model(x)
        n = len(calls)
        assert n > 0
        assert torch.equal(model(x), first) and len(calls) == n, "second call must reuse the folds"
        # in-place change through PyTorch (as an optimizer or load_state_dict does)
        model.layer1[0].conv2[1].running_var.mul_(4)
        model.layer2[0].downsample[0].weight.mul_(-1)
        changed = model(x)
    assert len(calls) > n
    assert_close(changed, _unfused_twin(model).double()(x.double()), 1e-5, "after in-place changes")
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.load_state_dict(state)
        assert_close(model(x), changed, 1e-6, "after load_state_dict")


def test_train_empties_the_cache_and_copies_carry_none():
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=5)).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 32, 32))
    block = model.layer1[0].conv1[0]
    assert block._fold_cache.value is not None
    assert copy.deepcopy(block)._fold_cache.value is None
    assert pickle.loads(pickle.dumps(block))._fold_cache.value is None
    saved = io.BytesIO()
    torch.save(model, saved)
    fresh = io.BytesIO()
    torch.save(copy.deepcopy(model), fresh)
    assert saved.tell() == pytest.approx(fresh.tell(), rel=0.01), "a saved model must not hold folded weights"
    model.train()
    assert block._fold_cache.value is None


def test_cache_not_used_under_autograd_or_for_inference_tensors(monkeypatch):
    torch.manual_seed(0)
    block = SpatioTemporalConv(4, 6, 3, padding=1).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    block(x).sum().backward()  # parameters require grad: folded in the graph, not cached
    assert block._fold_cache.value is None and block.spatial_conv.weight.grad is not None
    with torch.inference_mode():
        inf_block = SpatioTemporalConv(4, 6, 3, padding=1).eval()
        assert_close(inf_block(x), reference_of(inf_block)(x), 1e-5, "inference tensors")
    assert inf_block._fold_cache.value is None


def test_threads_share_an_eval_model():
    """Requests served by several threads on one model: every output right, while the
    first calls race to fill the caches and later ones read them."""
    import threading
    torch.manual_seed(0)
    model = randomize_all_bn(models.r2plus1d_10(num_classes=5)).eval()
    inputs = [torch.randn(1, 3, 4, 32, 32) for _ in range(4)]
    with torch.no_grad():
        want = [_unfused_twin(model)(x) for x in inputs]
    errors = []

    def serve(i):
        try:
            with torch.no_grad():
                for _ in range(3):
                    assert_close(model(inputs[i]), want[i], 1e-5, f"thread {i}")
        except Exception as err:  # noqa: BLE001  (reported by the main thread)
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def reference_of(block):
    ref = reference.SpatioTemporalConv(block.in_channels, block.out_channels, block.kernel_size, block.stride,
                                       block.padding, mid_channels=block.mid_channels)
    ref.load_state_dict(block.state_dict())
    return ref.eval()
