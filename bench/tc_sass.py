"""What the SASS of the built extension says about the tensor-core kernels, without a GPU:
per kernel, its registers, stack and local memory (`cuobjdump -res-usage`) and the
instruction mix of its main loop (`cuobjdump -sass`): instructions per HMMA by class.

The main loop is the loop (a backward branch and its target) that holds the most HMMA
instructions, the largest such when several do (the K loop holds the inner ones). cuobjdump
and nvdisasm come with the CUDA toolkit, or from PyPI (nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm, which the Makefile installs); `tools()` finds them.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sysconfig
from collections import Counter

# Instruction classes of the main-loop mix (by opcode, the part before the first dot).
CLASSES = {
    "hmma": {"HMMA"},
    "ldsm": {"LDSM"},
    "lds": {"LDS"},
    "sts": {"STS"},
    "ldg": {"LDG"},
    "ldgsts": {"LDGSTS"},
    "stg": {"STG"},
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "F2F", "F2FP", "FCHK", "FRND", "HADD2", "HFMA2",
             "HMUL2", "HSETP2", "HMNMX2"},
    "int": {"IMAD", "IADD3", "IADD", "VIADD", "VIADDMNMX", "LOP3", "SHF", "SHL", "SHR", "LEA", "ISETP", "IMNMX",
            "SEL", "PRMT", "IABS", "MOV", "UMOV", "UIADD3", "ULEA", "USHF", "ULOP3", "UISETP", "UIMAD", "ISCADD",
            "I2F", "F2I", "I2FP", "F2IP", "POPC", "FLO", "BMSK", "SGXT", "CS2R", "S2R", "S2UR", "R2UR", "PLOP3",
            "P2R", "R2P", "IMUL", "VIMNMX", "UPRMT", "USEL", "IDP", "LDC", "ULDC"},
    "branch": {"BRA", "BRX", "JMP", "BSSY", "BSYNC", "WARPSYNC", "EXIT", "RET"},
    "barrier": {"BAR", "DEPBAR", "LDGDEPBAR", "MEMBAR", "ARRIVES", "SYNCS"},
    "call": {"CALL"},
    "mufu": {"MUFU"},
    "local": {"LDL", "STL"},
}


def _pip_bin():
    """The bin folder of the nvidia-cuda-* wheels in this Python's site-packages."""
    site = sysconfig.get_paths()["purelib"]
    return [os.path.join(site, "nvidia", d, "bin") for d in ("cu13", "cuda_nvcc", "cuda_cuobjdump")]


def tools():
    """The folder that holds cuobjdump and nvdisasm, or None."""
    candidates = _pip_bin()
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin"))
    found = shutil.which("cuobjdump")
    if found:
        candidates.append(os.path.dirname(found))
    for folder in candidates:
        if all(os.access(os.path.join(folder, t), os.X_OK) for t in ("cuobjdump", "nvdisasm")):
            return folder
    return None


def extension_library():
    """The built extension's shared library (r2p1d_ext/_C*.so)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "r2p1d_ext")
    libs = sorted(glob.glob(os.path.join(root, "_C*.so")))
    if not libs:
        raise FileNotFoundError(f"no built extension in {os.path.abspath(root)} (run `make install`)")
    return libs[0]


def _run(folder, *args):
    """cuobjdump's output; "" for a library without device code (a CPU-only build)."""
    env = dict(os.environ, PATH=folder + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([os.path.join(folder, "cuobjdump"), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        if "does not contain device code" in done.stdout + done.stderr:
            return ""
        raise RuntimeError(f"cuobjdump {' '.join(args)} failed: {(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


_INSN = re.compile(r"/\*([0-9a-f]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?\s*([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


def parse_sass(text):
    """{mangled kernel name: [(address, opcode, full opcode, operands), ...]}."""
    kernels, current = {}, None
    for line in text.splitlines():
        if "Function : " in line:
            current = line.split("Function : ", 1)[1].strip()
            kernels[current] = []
            continue
        if current is None:
            continue
        m = _INSN.search(line)
        if m:
            kernels[current].append((int(m.group(1), 16), m.group(3), m.group(3) + (m.group(4) or ""), m.group(5)))
    return kernels


def main_loop(insns):
    """The main loop's instructions (see the module docstring), or [] when none holds an HMMA."""
    best, best_key = [], (0, 0)
    for i, (addr, op, _, operands) in enumerate(insns):
        if op != "BRA":
            continue
        t = _TARGET.search(operands)
        if not t or int(t.group(1), 16) >= addr:
            continue
        target = int(t.group(1), 16)
        body = [x for x in insns[:i + 1] if x[0] >= target]
        key = (sum(1 for x in body if x[1] == "HMMA"), len(body))
        if key > best_key:
            best, best_key = body, key
    return best if best_key[0] else []


def classify(opcode):
    for name, ops in CLASSES.items():
        if opcode in ops:
            return name
    return "other"


def loop_mix(insns):
    """Instruction counts of a main loop by class, and the 64-bit integer divisions (calls
    to the division subroutine) and the 32-bit ones (a MUFU.RCP after an I2F.U32.RP) in it."""
    mix = Counter(classify(op) for _, op, _, _ in insns)
    full = [f for _, _, f, _ in insns]
    mix["div32"] = sum(1 for f in full if f.startswith("I2F.U32.RP") or f.startswith("I2F.RP"))
    return dict(mix)


def analyse(library=None):
    """{mangled name: {"registers", "stack", "local", "shared", "loop": mix or None,
    "spill_insns": LDL/STL count in the whole kernel}} for every tensor-core kernel."""
    folder = tools()
    if folder is None:
        raise FileNotFoundError("cuobjdump and nvdisasm not found (pip install nvidia-cuda-cuobjdump "
                                "nvidia-cuda-nvdisasm, or set CUDA_HOME to a full toolkit)")
    library = library or extension_library()
    usage = {}
    for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)",
                         _run(folder, "-res-usage", library)):
        usage[m.group(1)] = dict(registers=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)),
                                 local=int(m.group(5)))
    out = {}
    for name, insns in parse_sass(_run(folder, "-sass", library)).items():
        if "igemm_kernel" not in name:
            continue
        loop = main_loop(insns)
        out[name] = dict(usage.get(name, {}), loop=loop_mix(loop) if loop else None,
                         loop_instructions=len(loop),
                         spill_insns=sum(1 for _, op, _, _ in insns if op in ("LDL", "STL")))
    return out


# Which GEMM a mangled kernel name is, by its loader types (csrc/tc/problems.h).
_GEMM_OF_LOADER = [("Im2colMN", "spatial_wgrad"), ("TemporalMN", "temporal_wgrad"),
                   ("SpatialDgradK", "spatial_dgrad"), ("Im2colK", "spatial_fprop"),
                   ("BnBackwardEpi", "temporal_dgrad"), ("TemporalK", "temporal_fprop")]
_ELEMS = {"0": "bf16", "1": "fp16", "2": "tf32"}


def signature(name):
    """(gemm, elem, bm, bn, column_reduction) of a mangled kernel name, or None."""
    gemm = next((g for key, g in _GEMM_OF_LOADER if key in name), None)
    elem = re.search(r"ElemKindE(\d)", name)
    tile = re.search(r"TileShapeILi(\d+)ELi(\d+)", name)
    if not (gemm and elem and tile):
        return None
    red = 0
    if gemm == "spatial_fprop":
        red = 3 if re.search(r"StoreEpiILS[0-9A-Za-z_]*?ELb1E", name) else 0
    elif gemm == "temporal_dgrad":
        red = 2
    return gemm, _ELEMS[elem.group(1)], int(tile.group(1)), int(tile.group(2)), red
