"""Failures a user can hit: each gives a clear error or the right answer (issue 13's
regression tests: every one failed on e221eb3)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.profiler import ProfilerActivity, profile

import r2p1d_ext
from r2p1d_ext import reference

from conftest import assert_close, make_pair


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
