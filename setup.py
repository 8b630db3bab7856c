"""Builds r2p1d_ext._C: a CUDAExtension where a GPU is visible to a CUDA torch and nvcc is
found, or with FORCE_CUDA=1 (torchvision's convention: a machine without a GPU builds the
CPU-only CppExtension in a few minutes and needs no CUTLASS; CI and `make gpu-check` set
FORCE_CUDA=1, so the CUDA code is still compiled there).

Environment:
  FORCE_CUDA=1 / FORCE_CPU=1   force the CUDA build / the CPU-only build
  CUDA_HOME                    the CUDA toolkit folder (found from nvcc on PATH otherwise,
                               following a wrapper script that execs the real nvcc)
  TORCH_CUDA_ARCH_LIST         GPU archs to build for (default "9.0": H100/H200)
  MAX_JOBS                     parallel compile jobs (ninja)

The CUDA build needs the CUTLASS/CuTe headers of the `nvidia-cutlass` package (headers only:
`pip install --no-deps nvidia-cutlass`); the tensor-core kernels use CuTe's MMA atoms.
"""
import glob
import importlib.util
import json
import os
import re
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "9.0"


def _find_cuda_home():
    """The toolkit folder: $CUDA_HOME, else the folder of the nvcc that `nvcc` on PATH is
    or execs (a wrapper script makes torch's own guess, dirname(dirname(nvcc)), wrong)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        match = re.search(rb"exec\s+[\"']?(/[^\s\"']+/bin/nvcc)", head)
        if match:
            nvcc = match.group(1).decode()
    return os.path.dirname(os.path.dirname(nvcc))


# torch.utils.cpp_extension reads CUDA_HOME when imported: settle it first.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _use_cuda():
    if os.environ.get("FORCE_CPU") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return torch.cuda.is_available() and _cuda_home is not None and os.path.exists(
        os.path.join(_cuda_home, "bin", "nvcc"))


def _cutlass_include():
    """The include folder of the nvidia-cutlass package, found without importing it (its
    Python generator needs packages we do not install)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the CUDA build needs the CUTLASS/CuTe headers: "
                           "pip install --no-deps nvidia-cutlass (or set FORCE_CPU=1)")
    include = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    if not os.path.exists(os.path.join(include, "cute", "arch", "mma_sm80.hpp")):
        raise RuntimeError(f"nvidia-cutlass is installed but {include} lacks cute/arch/mma_sm80.hpp")
    return include


def _sources(*folders, ext):
    return sorted(path for folder in folders for path in glob.glob(os.path.join("csrc", folder, "*" + ext)))


def _extension():
    # Every build: the schemas, the CPU kernels, the tensor-core kernel choice (csrc/tc/, plain
    # C++) and the CPU emulator of the tensor-core kernels (csrc/emulate/), which the tests run
    # without a GPU. Includes name their file from csrc/ (docs/architecture.md, the layers).
    sources = _sources("", "cpu", "cpu/bf16", "tc", "emulate", ext=".cpp")
    include_dirs = [os.path.join(HERE, "csrc")]
    # No -std flag: torch.utils.cpp_extension adds the standard this torch needs (C++20 for 2.14)
    cxx = ["-O3", "-fopenmp"]
    if not _use_cuda():
        return CppExtension("r2p1d_ext._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    # Without a GPU torch cannot detect an arch: default to a small explicit list.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    # The CUDA ops' registration and routing, the direct kernels, the tensor-core launchers.
    sources += _sources("cuda", ext=".cpp") + _sources("cuda/direct", "cuda/igemm", ext=".cu")
    # -DNDEBUG: without it nvcc serialises the tensor-core instructions (warning C7510).
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG"]
    return CUDAExtension("r2p1d_ext._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                         include_dirs=include_dirs + [_cutlass_include()], extra_link_args=["-fopenmp"])


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Objects in a folder that stays (build/temp-cpu or build/temp-cuda), so that ninja
    rebuilds only the sources that changed: pip's editable installs would otherwise compile
    everything again in a fresh temporary folder each time."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(HERE, "build", "temp-cuda" if _use_cuda() else "temp-cpu")


def _write_build_info(cuda: bool) -> None:
    """r2p1d_ext/_build_info.json: what this build is made of, for `r2p1d check` (git-ignored;
    package data, so a wheel carries it). Written before setup() so every build copies it."""
    info = {"torch": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda if cuda else None,
            "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda else None}
    with open(os.path.join(HERE, "r2p1d_ext", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=2)


# Metadata, dependencies, extras and the `r2p1d` script are in pyproject.toml. Imported (not
# run) by tests/test_build.py, which asks _extension() what a build would compile.
if __name__ == "__main__":
    extension = _extension()
    _write_build_info(_use_cuda())
    setup(ext_modules=[extension], cmdclass={"build_ext": _BuildExt},
          package_data={"r2p1d_ext": ["_build_info.json"]})
