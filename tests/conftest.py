"""Shared helpers: devices, tolerances, module pairs (fused vs reference)."""
import contextlib
import importlib.util
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import r2p1d_ext
from r2p1d_ext import reference
from r2p1d_ext.tools.check import env_setting

# Random-shape tests: 50 cases each by default, HYPOTHESIS_PROFILE=stress for 500.
settings.register_profile("default", max_examples=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("stress", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

HAS_CUDA = torch.cuda.is_available()


def cutlass_include():
    """The CUTLASS/CuTe include folder of the nvidia-cutlass package, or None."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    include = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return include if os.path.isdir(os.path.join(include, "cute")) else None


@contextlib.contextmanager
def env_setting(name, value):
    """Runs with the environment variable `name` set to `value` (the kernels' settings,
    R2P1D_WINOGRAD and the like, are read at every call), then restores it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))]

# ||out - ref|| / ||ref|| against a float64 reference of the same inputs (docs/testing.md).
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """t's values rounded to TF32 (10 explicit mantissa bits, to nearest, ties away from
    zero, as cvt.rna.tf32.f32), in t's dtype: what the tensor-core kernels multiply."""
    bits = t.detach().float().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & -0x2000).view(torch.float32)
    return rounded.to(t.dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error in the 2-norm; NaN/inf never pass (they give inf)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out, ref, tol, what=""):
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def randomize_bn(bn: torch.nn.BatchNorm3d, generator=None):
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=generator)
        bn.bias.uniform_(-0.5, 0.5, generator=generator)
        bn.running_mean.uniform_(-0.5, 0.5, generator=generator)
        bn.running_var.uniform_(0.5, 2.0, generator=generator)


def randomize_all_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """randomize_bn on every BatchNorm3d of `model` (a folded BatchNorm must then show)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            randomize_bn(m, gen)
    return model


def make_pair(*args, device="cpu", dtype=torch.float32, **kwargs):
    """A reference block in float64 and the fused block in `dtype` with the same state
    (values representable in `dtype`, so the reference sees exactly the fused inputs)."""
    ref = reference.SpatioTemporalConv(*args, **kwargs).to(dtype)
    randomize_bn(ref.bn)
    fused = r2p1d_ext.SpatioTemporalConv(*args, **kwargs).to(dtype)
    fused.load_state_dict(ref.state_dict())
    return ref.double(), fused.to(device=device)


def random_input(shape, dtype, device="cpu", memory_format=torch.contiguous_format):
    """(fused input in dtype on device, the same values in float64 on the CPU)."""
    x = torch.randn(shape, dtype=dtype).to(memory_format=memory_format)
    return (x.to(device).detach().clone().requires_grad_(),
            x.double().detach().clone().requires_grad_())


def block_results(module, x, out):
    """Every tensor the fused block must get right after a forward and a backward: the
    output, the input and parameter gradients and the running statistics."""
    res = {"output": out, "grad input": x.grad}
    for name, p in module.named_parameters():
        res[f"grad {name}"] = p.grad
    if module.bn.running_mean is not None:
        res["running_mean"], res["running_var"] = module.bn.running_mean, module.bn.running_var
    return res


def _errors(got, want, floors):
    grads = [w for n, w in want.items() if n.startswith("grad") and w is not None]
    total = torch.cat([g.detach().double().cpu().reshape(-1) for g in grads]).norm().item() if grads else 0.0
    errs = {}
    for name, w in want.items():
        g = got.get(name)
        if w is None:
            assert g is None, f"{name}: expected no value, got one"
            continue
        assert g is not None, f"{name}: missing"
        g64, w64 = g.detach().double().cpu(), w.detach().double().cpu()
        assert g64.shape == w64.shape, f"{name}: shape {tuple(g64.shape)} != {tuple(w64.shape)}"
        # Tiny gradients are measured against the scale of the whole gradient, and those
        # that are zero in exact arithmetic against the scale given in `floors`.
        denom = max(w64.norm().item(), floors.get(name, 0.0))
        if name.startswith("grad"):
            denom = max(denom, 1e-3 * total)
        err = (g64 - w64).norm().item() / (denom if denom > 0 else 1.0)
        errs[name] = err if torch.isfinite(g64).all() else float("inf")
    return errs


def assert_results_close(got, want, tol, floors=None):
    """Each tensor within `tol` of the float64 reference (relative 2-norm error)."""
    for name, err in _errors(got, want, floors or {}).items():
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g}"


def spatial_reference(x, w, b, stride, padding, grad_y, grad_mean, grad_var):
    """y, mean, var of reference.spatial_conv_stats in float64, and the gradients (x, w, b)
    of sum(y*grad_y) + mean.grad_mean + var.grad_var: what spatial_conv_stats and
    spatial_conv_backward compute."""
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if b is not None else None
    y, mean, var = reference.spatial_conv_stats(xd, wd, bd, stride, padding)
    loss = (y * grad_y.double()).sum() + (mean * grad_mean.double()).sum() + \
        (var * grad_var.double()).sum()
    loss.backward()
    return y, mean, var, xd.grad, wd.grad, bd.grad if bd is not None else None


def cpu_kernels(path):
    """R2P1D_CPU_KERNELS set to `path` (read by the CPU kernels at every call)."""
    return env_setting("R2P1D_CPU_KERNELS", path)


def _cpu_bf16_paths():
    """The bfloat16 paths of the CPU kernels that this machine can run (R2P1D_CPU_KERNELS):
    the AMX code also on the scalar model of the tiles, so that every machine checks it."""
    with cpu_kernels("auto"):
        best = torch.ops.r2p1d.cpu_bf16_path()
    paths = [pytest.param("emulated-amx", id="emulated-amx"), pytest.param("float32", id="float32")]
    for name, unit in (("amx", "AMX-BF16"), ("avx512-bf16", "AVX512-BF16")):
        runs = best == "amx" or best == name
        paths.append(pytest.param(name, id=name, marks=pytest.mark.skipif(
            not runs, reason=f"this CPU has no {unit} (R2P1D_CPU_KERNELS={name} refuses it)")))
    return paths


CPU_BF16_PATHS = _cpu_bf16_paths()


def tiny_video_set(tmp_path_factory, name: str) -> str:
    """The trainers' tests' data: two motion classes, 3 training and 2 validation videos
    each, 8 frames of 32x40 (a folder of its own per caller)."""
    from r2p1d_ext.data.synthetic import make_synthetic
    root = str(tmp_path_factory.mktemp(name))
    make_synthetic(root, videos_per_class=(3, 2), classes=["left_fast", "rotate_cw"], frames=8,
                   size=(32, 40), progress=False)
    return root
