"""The build: what setup.py compiles where (the CUDA part where a GPU is visible or with
FORCE_CUDA=1, which CI sets), and with the CUDA part, that its kernels were compiled and
registered (CI has no GPU, so this is what proves the .cu files build)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import r2p1d_ext  # noqa: F401

OPS = ["spatial_conv_stats", "spatial_conv_backward", "temporal_conv_bnrelu",
       "temporal_conv_bnrelu_backward", "fused_eval", "update_running_stats"]


def _has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"r2p1d::{op}", key)


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert _has_kernel(op, "CPU")


CUDA_BUILD = os.environ.get("FORCE_CPU") != "1" and (os.environ.get("FORCE_CUDA") == "1" or torch.cuda.is_available())
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not CUDA_BUILD, reason="no GPU and no FORCE_CUDA=1: a CppExtension build")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_compiled_and_registered(op):
    assert _has_kernel(op, "CUDA"), "torch has CUDA and nvcc is present, but the CUDA kernels were not built"


@pytest.mark.skipif(not CUDA_BUILD, reason="no GPU and no FORCE_CUDA=1: a CppExtension build")
def test_tensor_core_kernels_compiled():
    """The tensor-core GEMM kernels (csrc/tc/, launched from csrc/cuda/igemm/) are in the library: their device entry
    points exist only in a CUDA build (the CPU emulator runs the same code without them)."""
    import r2p1d_ext._C as ext
    with open(ext.__file__, "rb") as f:
        binary = f.read()
    assert b"_ZN5r2p1d2tc12igemm_kernel" in binary, "no tensor-core kernel in the CUDA build"
    for loader in (b"Im2colK", b"SpatialDgradK", b"Im2colMN", b"TemporalK", b"TemporalMN", b"WeightMN"):
        assert loader in binary


def _compiles_cuda(**env):
    """Whether setup.py's extension, for the environment `env`, has .cu sources."""
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "FORCE_CPU")}
    code = "import setup; print(any(s.endswith('.cu') for s in setup._extension().sources))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(base, **env), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the default build is the CUDA one")
def test_no_gpu_builds_the_cpu_extension_unless_forced():
    """Without a visible GPU the default build compiles no CUDA (minutes less, no CUTLASS);
    FORCE_CUDA=1 compiles it all the same (CI, make gpu-check); FORCE_CPU=1 never does."""
    assert not _compiles_cuda()
    assert not _compiles_cuda(FORCE_CPU="1", FORCE_CUDA="1")
    # With FORCE_CUDA=1 (and the CUTLASS headers the CUDA build needs, found as setup.py finds them)
    if torch.version.cuda is not None and importlib.util.find_spec("cutlass_library") is not None:
        assert _compiles_cuda(FORCE_CUDA="1")


@pytest.mark.parametrize("op", [op for op in OPS if op != "update_running_stats"])
def test_emulator_registered(op):
    """Every build carries the CPU emulator of the tensor-core kernels (and their plan)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r2p1d_tc_emulate::{op}", "CPU")
    assert torch.ops.r2p1d_tc_emulate.plan("temporal_fprop", [1, 8, 2, 3, 3, 8, 3, 1, 1], torch.bfloat16)
