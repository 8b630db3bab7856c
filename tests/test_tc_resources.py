"""The tensor-core kernels' resources as ptxas reports them (no GPU needed): every kernel
compiles for sm_90 with no stack frame and no spills, within the registers and shared memory
that let the CTAs the plan counts on reside on one SM together (csrc/tc/plan.h,
resident_ctas: one large 128x128 CTA, four small 64x64 ones; __launch_bounds__ gives ptxas
the same numbers)."""
import concurrent.futures as cf
import os
import re
import shutil
import subprocess

import pytest

from conftest import cutlass_include

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTERS_PER_SM = 65536
SHARED_MEMORY_PER_SM = 228 * 1024  # H100/H200
RESIDENT = {(128, 128): 1, (64, 64): 4}  # csrc/tc/plan.h, resident_ctas


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
    """{mangled name: (stack bytes, spill stores, spill loads, registers, smem bytes)}."""
    out = {}
    for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads\n.*?Used (\d+) registers.*?(\d+) bytes smem", report):
        out[m.group(1)] = tuple(int(g) for g in m.groups()[1:])
    return out


@pytest.fixture(scope="module")
def reports():
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
    assert len(kernels) == 42, f"expected the 42 kernels of the six GEMMs, got {len(kernels)}"
    problems = []
    for name, (stack, stores, loads, registers, smem) in kernels.items():
        tile = re.search(r"TileShapeILi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELi(\d+)E", name)
        bm, bn, wm, wn, resident = (int(g) for g in tile.groups())
        threads = 32 * wm * wn
        assert RESIDENT[(bm, bn)] == resident, f"{name}: resident_ctas changed, update this test"
        if stack or stores or loads:
            problems.append(f"{name}: {stack} bytes stack frame, {stores}/{loads} bytes spilled")
        if registers * threads * resident > REGISTERS_PER_SM:
            problems.append(f"{name}: {registers} registers x {threads} threads leave room for fewer than "
                            f"{resident} CTAs per SM")
        if smem * resident > SHARED_MEMORY_PER_SM:
            problems.append(f"{name}: {smem} bytes of shared memory leave room for fewer than {resident} CTAs")
    assert not problems, "\n".join(problems)
