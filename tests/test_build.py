"""The build: with a CUDA torch and nvcc present, the CUDA kernels must have been compiled
and registered (CI has no GPU, so this is what proves the .cu files build)."""
import os
import shutil

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


@pytest.mark.skipif(torch.version.cuda is None or os.environ.get("FORCE_CPU") == "1"
                    or (shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME")),
                    reason="CPU-only torch or no CUDA toolkit: a CppExtension build")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_compiled_and_registered(op):
    assert _has_kernel(op, "CUDA"), "torch has CUDA and nvcc is present, but the CUDA kernels were not built"


@pytest.mark.skipif(torch.version.cuda is None or os.environ.get("FORCE_CPU") == "1"
                    or (shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME")),
                    reason="CPU-only torch or no CUDA toolkit: a CppExtension build")
def test_tensor_core_kernels_compiled():
    """The tensor-core GEMM kernels (csrc/tc/, launched from csrc/cuda/igemm/) are in the library: their device entry
    points exist only in a CUDA build (the CPU emulator runs the same code without them)."""
    import r2p1d_ext._C as ext
    with open(ext.__file__, "rb") as f:
        binary = f.read()
    assert b"_ZN5r2p1d2tc12igemm_kernel" in binary, "no tensor-core kernel in the CUDA build"
    for loader in (b"Im2colK", b"SpatialDgradK", b"Im2colMN", b"TemporalK", b"TemporalMN", b"WeightMN"):
        assert loader in binary


@pytest.mark.parametrize("op", [op for op in OPS if op != "update_running_stats"])
def test_emulator_registered(op):
    """Every build carries the CPU emulator of the tensor-core kernels (and their plan)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r2p1d_tc_emulate::{op}", "CPU")
    assert torch.ops.r2p1d_tc_emulate.plan("temporal_fprop", [1, 8, 2, 3, 3, 8, 3, 1, 1], torch.bfloat16)
