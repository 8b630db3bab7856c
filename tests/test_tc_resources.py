"""The tensor-core kernels' resources as ptxas reports them (no GPU needed): every kernel
compiles for sm_90 with no stack frame and no spills, within the registers and shared memory
that let the CTAs the plan counts on reside on one SM together (csrc/tc/plan.h: each tile
shape's min_ctas, which is also the kernel's TileShape argument and __launch_bounds__'s
minimum).

They compile every launcher with nvcc (about 3 minutes on 2 cores), so they run where the
extension was built with its CUDA part (CI and `make gpu-check` force it: FORCE_CUDA=1) or
with R2P1D_TEST_PTXAS=1; a CPU-only build's `make test` checks what it built."""
import concurrent.futures as cf
import os
import re
import shutil
import subprocess

import pytest

from conftest import cutlass_include
from r2p1d_ext.tools.check import cuda_built

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTERS_PER_SM = 65536
SHARED_MEMORY_PER_SM = 228 * 1024  # H100/H200
# The kernels of csrc/cuda/igemm/: per element type, the pixel GEMMs (spatial forward with and
# without statistics, spatial and temporal input gradients, temporal forward) on each of the
# 5 pixel tiles, and the two weight gradients on each of the 6 weight-gradient tiles.
KERNELS = 3 * (5 * 5 + 2 * 6)


def _nvcc():
    if os.environ.get("CUDA_HOME"):
        return os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    return shutil.which("nvcc")


def _report(source):
    """ptxas -v's lines for one launcher file, compiled as the build compiles it."""
    cmd = [_nvcc(), "-cubin", "-arch=sm_90", "-O3", "--expt-relaxed-constexpr", "-DNDEBUG", "-std=c++20",
           "-Xptxas", "-v", f"-I{os.path.join(ROOT, 'csrc')}", f"-I{cutlass_include()}", source, "-o", os.devnull]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _kernels(report):
    """{mangled name: (stack bytes, spill stores, spill loads, registers, static smem bytes)}.
    The GEMM kernels' shared memory is dynamic (ptxas prints none; csrc/tc/igemm.h checks
    its size per tile shape with a static_assert)."""
    out = {}
    for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads\n[^\n]*Used (\d+) registers[^\n]*?(?:(\d+) bytes smem)?\n", report):
        out[m.group(1)] = tuple(int(g or 0) for g in m.groups()[1:])
    return out


@pytest.fixture(scope="module")
def reports():
    if not cuda_built() and os.environ.get("R2P1D_TEST_PTXAS") != "1":
        pytest.skip("the extension was built without its CUDA part (FORCE_CUDA=1 or R2P1D_TEST_PTXAS=1 runs these)")
    if cutlass_include() is None or _nvcc() is None:
        pytest.skip("needs nvcc and the nvidia-cutlass headers")
    folder = os.path.join(ROOT, "csrc", "cuda", "igemm")
    sources = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".cu"))
    with cf.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        return dict(zip(sources, pool.map(_report, sources)))


def test_every_kernel_fits_without_spills(reports):
    kernels = {}
    for report in reports.values():
        kernels.update(_kernels(report))
    gemms = {k: v for k, v in kernels.items() if "igemm_kernel" in k}
    assert len(gemms) == KERNELS, f"expected the {KERNELS} GEMM kernels, got {len(gemms)}"
    assert len(kernels) - len(gemms) == 2, "expected the two finalize kernels (csrc/tc/finalize.h)"
    problems = []
    for name, (stack, stores, loads, registers, smem) in kernels.items():
        tile = re.search(r"TileShapeILi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)E", name)
        if tile:
            bm, bn, wm, wn, resident = (int(g) for g in tile.groups())
            threads = 32 * wm * wn
        else:  # a finalize kernel (csrc/tc/finalize.h: kThreads, kMinCtasPerSm)
            threads, resident = 128, 4
        if stack or stores or loads:
            problems.append(f"{name}: {stack} bytes stack frame, {stores}/{loads} bytes spilled")
        if registers * threads * resident > REGISTERS_PER_SM:
            problems.append(f"{name}: {registers} registers x {threads} threads leave room for fewer than "
                            f"{resident} CTAs per SM")
        if smem * resident > SHARED_MEMORY_PER_SM:
            problems.append(f"{name}: {smem} bytes of shared memory leave room for fewer than {resident} CTAs")
    assert not problems, "\n".join(problems)
