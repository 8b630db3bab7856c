#!/usr/bin/env python3
"""Does a change alter what the CUDA kernels compute? Compiles every .cu file of a checkout's
csrc/ to PTX (no GPU needed) and compares the kernels of two such outputs.

    python tools/ptx_compare.py emit OUT [--root DIR] [--arch 90] [--jobs 2]
    python tools/ptx_compare.py compare BEFORE AFTER

`emit` compiles with the build's nvcc flags (setup.py) minus the line info, for one arch.
`compare` matches the `.entry` functions by demangled name (anonymous namespaces and the
direct family's namespace left out, so files may move) and compares their bodies with
symbol names normalised; it prints the kernels only one side has and those whose bodies
differ, and exits 1 if any. A refactor that leaves every body equal leaves the GPU code as
it was. Needs nvcc (CUDA_HOME or PATH), a CUDA build of torch and nvidia-cutlass.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig

FLAGS = ["-O3", "--expt-relaxed-constexpr", "-DNDEBUG", "-std=c++20", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
         "-DTORCH_EXTENSION_NAME=_C", "-D_GLIBCXX_USE_CXX11_ABI=1"]


def _nvcc() -> str:
    """The real nvcc: $CUDA_HOME/bin/nvcc, else the one a wrapper on PATH execs."""
    if os.environ.get("CUDA_HOME"):
        return os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    path = shutil.which("nvcc")
    if path is None:
        sys.exit("nvcc not found: set CUDA_HOME")
    head = open(os.path.realpath(path), "rb").read(4096)
    match = re.search(rb"exec\s+[\"']?(/[^\s\"']+/bin/nvcc)", head) if head.startswith(b"#!") else None
    return match.group(1).decode() if match else path


def _includes(root: str, nvcc: str):
    os.environ.setdefault("CUDA_HOME", os.path.dirname(os.path.dirname(nvcc)))  # torch's guess is wrong
    import torch.utils.cpp_extension as ext
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None:
        sys.exit("the nvidia-cutlass headers are needed: pip install --no-deps nvidia-cutlass")
    cutlass = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    toolkit = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")
    paths = ext.include_paths() + [sysconfig.get_paths()["include"], cutlass, toolkit, os.path.join(root, "csrc")]
    return [f"-I{p}" for p in paths]


def emit(out: str, root: str, arch: str, jobs: int) -> None:
    nvcc = _nvcc()
    includes = _includes(root, nvcc)
    sources = sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cu"), recursive=True))
    os.makedirs(out, exist_ok=True)

    def compile_one(src: str):
        name = os.path.relpath(src, root).replace(os.sep, "_") + ".ptx"
        cmd = [nvcc, *FLAGS, f"-arch=sm_{arch}", *includes, "-ptx", src, "-o", os.path.join(out, name)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        return src, done.returncode, done.stderr

    with cf.ThreadPoolExecutor(jobs) as pool:
        for src, rc, err in pool.map(compile_one, sources):
            if rc != 0:
                sys.exit(f"{src} did not compile:\n{err[-3000:]}")
    print(f"{len(sources)} files -> {out}")


def _entries(folder: str):
    out = {}
    for path in glob.glob(os.path.join(folder, "*.ptx")):
        for m in re.finditer(r"\.entry (\S+)\((.*?)\n\}\n", open(path).read(), re.S):
            name = subprocess.run(["c++filt", m.group(1)], capture_output=True, text=True).stdout.strip()
            name = name.replace("(anonymous namespace)::", "").replace("direct::", "")
            body = re.sub(r"^\s*\.(loc|file)\b.*\n", "", m.group(0), flags=re.M)
            out[name] = re.sub(r"_Z\w+", "SYM", body)
    return out


def compare(before: str, after: str) -> int:
    a, b = _entries(before), _entries(after)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    print(f"{len(a)} kernels in {before}, {len(b)} in {after}; {len(set(a) & set(b)) - len(differ)} identical")
    for title, names in (("only before", only_a), ("only after", only_b), ("bodies differ", differ)):
        for n in names[:10]:
            print(f"  {title}: {n if len(n) <= 160 else n[:157] + '...'}")
        if len(names) > 10:
            print(f"  ... and {len(names) - 10} more {title}")
    return 1 if only_a or only_b or differ else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("emit", help="compile every .cu of ROOT/csrc to PTX in OUT")
    e.add_argument("out")
    e.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    e.add_argument("--arch", default="90")
    e.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    c = sub.add_parser("compare", help="compare the kernels of two emit outputs")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args()
    if args.command == "emit":
        emit(args.out, os.path.abspath(args.root), args.arch, args.jobs)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
