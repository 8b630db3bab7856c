"""``r2p1d check``: the installed build verified on this machine, for each available device
and kernel family: float64 ``gradcheck`` of every differentiable op, ``torch.library.opcheck``
of every op, and ``SpatioTemporalConv`` against ``reference.SpatioTemporalConv`` (forward,
every gradient, the running statistics; train and eval) on R(2+1)D-18 block shapes.

Families: the CPU kernels; on CUDA the tensor-core kernels (bfloat16, float16, float32 as
TF32) and the direct kernels (float64, float32), chosen with R2P1D_CUDA_KERNELS. Errors are
relative in the 2-norm against the float64 reference (a gradient against the scale of all
the block's gradients when its own is tiny), with the tolerances docs/testing.md states. A
ReLU input closer to 0 than the tolerance (relative to the inputs' spread) may take either
side of the kink in the checked precision; no gradient is sent through such positions, so the
check measures the kernels and not which side the rounding fell on (compare_block).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops, reference
from ..module import SpatioTemporalConv
from .timing import cpu_name

# Relative 2-norm error allowed per dtype (docs/testing.md); TF32 multiplies 10-bit mantissas.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
TF32_TOLERANCE = 5e-3
# R(2+1)D-18 blocks (in, out, stride) at a reduced clip and batch: the stem, a conv2_x block,
# a downsampling conv3_x block and a conv4_x block (the mid channel counts are R(2+1)D's).
SHAPES = [("stem", 3, 64, (1, 2, 2), (7, 7), 3), ("conv2_x", 64, 64, 1, 3, 1), ("conv3_x down", 64, 128, 2, 3, 1),
          ("conv4_x", 256, 256, 1, 3, 1)]
QUICK_SHAPES = SHAPES[1:3]


@dataclasses.dataclass
class Row:
    check: str      # gradcheck, opcheck, module train, module eval
    what: str       # the op or the block shape
    device: str
    family: str     # cpu, tensor-core, direct
    dtype: str
    error: Optional[float]
    tolerance: Optional[float]
    passed: bool
    note: str = ""


# ------------------------------------------------------------------ the build's facts
def _cpu_vector_width() -> str:
    """What the CPU kernels' target_clones resolve to here (avx512f, else avx2, else the
    portable version), read from the CPU's flags as the loader's resolver does."""
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    words = set(flags.split())
    if "avx512f" in words:
        return "AVX-512 (512-bit)"
    if "avx2" in words:
        return "AVX2 (256-bit)"
    return f"portable (torch reports {torch.backends.cpu.get_cpu_capability()})"


def build_facts() -> Dict[str, Any]:
    """torch and CUDA versions, what the extension was built with (r2p1d_ext/_build_info.json,
    written by setup.py), the kernel families in the build, the CPU vector width, the GPU."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info: Dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(package, "_build_info.json")) as f:
            info = json.load(f)
    families = ["cpu"]
    if cuda_built():
        families.append("cuda direct")
        if tensor_core_kernels_built():
            families.append("cuda tensor-core")
    facts = {"torch": torch.__version__, "torch CUDA": torch.version.cuda or "none",
             "built against torch": info.get("torch", "unknown"),
             "CUDA archs compiled": info.get("cuda_archs") or "none (CPU-only build)",
             "kernel families": ", ".join(families), "CPU": cpu_name(),
             "CPU kernels": _cpu_vector_width(), "CPU bfloat16 path": torch.ops.r2p1d.cpu_bf16_path(),
             "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts["GPU"] = f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
    else:
        facts["GPU"] = "none visible"
    return facts


def cuda_built() -> bool:
    """The extension was built with its CUDA part (its ops have CUDA kernels)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("r2p1d::spatial_conv_stats", "CUDA")


@functools.lru_cache(maxsize=None)
def tensor_core_kernels_built() -> bool:
    """The tensor-core GEMM kernels' entry points are in the library (only a CUDA build with
    sm_80+ archs has them)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in glob.glob(os.path.join(package, "_C*.so")):
        with open(path, "rb") as f:
            if b"_ZN5r2p1d2tc12igemm_kernel" in f.read():
                return True
    return False


@contextlib.contextmanager
def env_setting(name: str, value: Optional[str]) -> Iterator[None]:
    """The environment variable `name` set to `value` (left as it is for None) for the
    block, then restored: R2P1D_CUDA_KERNELS and R2P1D_CPU_KERNELS, which the kernels read
    at every call."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _kernels(setting: Optional[str]):
    """R2P1D_CUDA_KERNELS set for the block (read by the CUDA router at every call)."""
    return env_setting("R2P1D_CUDA_KERNELS", setting)


# ------------------------------------------------------------------ the ops on small inputs
def op_samples(device: str, dtype=torch.float64, requires_grad: bool = False) -> Dict[str, Tuple[Callable, tuple]]:
    """Each op with small inputs that cover strides, padding and odd sizes:
    name -> (op, args)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape, scale=1.0, shift=0.0, stats=False):
        kind = (torch.float64 if dtype == torch.float64 else torch.float32) if stats else dtype
        x = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(kind)
        return x.to(device).requires_grad_(requires_grad)

    x, ws, bs = t(2, 3, 3, 6, 5), t(4, 3, 1, 3, 2), t(4)
    y, wt, bt = t(2, 4, 5, 3, 2), t(3, 4, 3, 1, 1), t(3)
    mean, scale, shift = t(4, scale=0.3, stats=True), t(4, scale=0.2, shift=1.0, stats=True), t(4, scale=0.3, stats=True)
    xe, wse, bse, wte, bte = t(2, 3, 5, 7, 6), t(4, 3, 1, 3, 3), t(4), t(5, 4, 3, 1, 1), t(5)
    eval_args = (xe, wse, bse, wte, bte, [2, 2, 1], [1, 1, 0])
    with torch.no_grad():
        res = torch.randn(torch.ops.r2p1d.fused_eval.default(*eval_args).shape, generator=g, dtype=torch.float64)
    res = res.to(dtype).to(device)
    return {
        "spatial_conv_stats": (torch.ops.r2p1d.spatial_conv_stats.default, (x, ws, bs, [2, 1], [1, 0])),
        "temporal_conv_bnrelu": (torch.ops.r2p1d.temporal_conv_bnrelu.default,
                                 (y, mean, scale, shift, wt, bt, 2, 1)),
        "fused_eval": (torch.ops.r2p1d.fused_eval.default, eval_args + (res, True)),
    }


def _gradcheck_rows(device: str, family: str) -> List[Row]:
    rows = []
    for name, (op, args) in op_samples(device, torch.float64, requires_grad=True).items():
        if name == "fused_eval":  # inference only: no gradient
            continue
        inputs = [a for a in args if isinstance(a, Tensor)]

        def f(*tensors, op=op, args=args):
            it = iter(tensors)
            out = op(*[next(it) if isinstance(a, Tensor) else a for a in args])
            return out if isinstance(out, Tensor) else tuple(out)
        # Tolerance column: gradcheck's atol (with rtol 1e-3) between the analytical and the
        # finite-difference Jacobians.
        rows.append(_guarded("gradcheck", name, device, family, "float64", 1e-5,
                             lambda: torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)))
    return rows


def _opcheck_rows(device: str, family: str, dtype: torch.dtype) -> List[Row]:
    rows = []
    for name, (op, args) in op_samples(device, dtype, requires_grad=dtype == torch.float64).items():
        def run(op=op, args=args):
            torch.library.opcheck(op, args)  # raises on the first failed test
            return True
        rows.append(_guarded("opcheck", name, device, family, _name(dtype), None, run))
    return rows


def _guarded(check, what, device, family, dtype, tol, run: Callable[[], bool]) -> Row:
    try:
        ok = bool(run())
        return Row(check, what, device, family, dtype, None, tol, ok)
    except Exception as err:  # a failed check raises with its reason
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Row(check, what, device, family, dtype, None, tol, False, first[:200])


# ------------------------------------------------------------------ the block against the reference
def _rel(got: Optional[Tensor], want: Optional[Tensor], floor: float = 0.0) -> float:
    if got is None or want is None:
        return 0.0 if got is None and want is None else float("inf")
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if g.shape != w.shape or not torch.isfinite(g).all():
        return float("inf")
    return (g - w).norm().item() / max(w.norm().item(), floor, 1e-300)


def _kink_free_gradient(g: Tensor, pre: Tensor, temporal: torch.nn.Conv3d, band: float) -> Tensor:
    """`g` (the output's gradient, float64) projected so that the gradient reaching every ReLU
    input within `band` of 0 is exactly 0.

    Such an input may land on either side of the ReLU in the fused block's precision, and the
    side changes the gradients by a whole term (a 3x3 window of grad input, one term of each
    weight gradient): the comparison would say more about the rounding than about the kernel.
    With no gradient flowing through those positions both sides give the same backward, and the
    forward differs by at most `band` there. The ReLU output z at (n, c, t, h, w) reaches the
    output only through the temporal conv's column (n, :, :, h, w), so each such column of `g`
    is projected on its own onto the null space of its constraints <a_p, g> = grad_z[p] = 0,
    a_p[o, t_o] = W_t[o, c, t - t_o * stride + padding]."""
    near = (pre.abs() < band).nonzero().tolist()
    if not near:
        return g
    weight = temporal.weight.detach().double()[:, :, :, 0, 0]  # (out, mid, kt)
    (st, pt), kt = (temporal.stride[0], temporal.padding[0]), weight.shape[2]
    t_out = g.shape[2]
    columns: Dict[Tuple[int, int, int], List[Tuple[int, int]]] = {}
    for n, c, t, h, w in near:
        columns.setdefault((n, h, w), []).append((c, t))
    g = g.clone()
    for (n, h, w), positions in columns.items():
        rows = torch.zeros(len(positions), g.shape[1], t_out, dtype=torch.float64)
        for i, (c, t) in enumerate(positions):
            for t_o in range(t_out):
                tap = t - t_o * st + pt
                if 0 <= tap < kt:
                    rows[i, :, t_o] = weight[:, c, tap]
        a = rows.reshape(len(positions), -1)
        v = g[n, :, :, h, w].reshape(-1)
        g[n, :, :, h, w] = (v - torch.linalg.pinv(a) @ (a @ v)).reshape(g.shape[1], t_out)
    return g


def make_block_pair(shape, dtype: torch.dtype, seed: int = 0):
    """(the float64 reference block, SpatioTemporalConv in `dtype` on the CPU) with the same
    state: BatchNorm off its initial identity, every value exact in `dtype`."""
    _, cin, cout, stride, kernel, pad = shape
    kernel, pad = (kernel, pad) if isinstance(kernel, int) else ((3, *kernel), (1, pad, pad))
    torch.manual_seed(seed)
    ref = reference.SpatioTemporalConv(cin, cout, kernel, stride=stride, padding=pad)
    with torch.no_grad():
        ref.bn.weight.uniform_(0.5, 1.5); ref.bn.bias.uniform_(-0.3, 0.3)
        ref.bn.running_mean.uniform_(-0.2, 0.2); ref.bn.running_var.uniform_(0.5, 1.5)
        for p in list(ref.parameters()) + list(ref.buffers()):
            if p.is_floating_point():
                p.copy_(p.to(dtype).double())
    fused = SpatioTemporalConv(cin, cout, kernel, stride=stride, padding=pad)
    fused.load_state_dict(ref.state_dict())
    return ref.double(), fused.to(dtype)


def compare_block(fused: torch.nn.Module, ref: torch.nn.Module, x: Tensor, train: bool, kink_band: float,
                  seed: int = 0) -> Dict[str, float]:
    """`fused` on `x` (its dtype and device) against the float64 `ref` on the same values:
    the output and, in training, every gradient and the running statistics, as relative
    errors. ReLU inputs within `kink_band` (relative to their standard deviation) of 0 carry
    no gradient (_kink_free_gradient): which side of the ReLU they take is rounding."""
    fused.train(train)
    ref.train(train)
    xf = x.clone().requires_grad_(train)  # two leaves, never the same tensor
    xr = x.detach().double().cpu().clone().requires_grad_(train)
    pre: List[Tensor] = []  # the reference's BatchNorm output: the ReLU's input
    hook = ref.bn.register_forward_hook(lambda mod, inp, out: pre.append(out.detach()))
    try:
        want = ref(xr)
    finally:
        hook.remove()
    out = fused(xf)
    errs = {"output": _rel(out, want)}
    if train:
        torch.manual_seed(seed + 1)
        g = torch.randn(want.shape, dtype=torch.float64).to(x.dtype).double()
        g = _kink_free_gradient(g, pre[0], ref.temporal_conv, kink_band * pre[0].std().item())
        g = g.to(x.dtype)
        out.backward(g.to(out.device))
        want.backward(g.double())
        grads = {"input": (xf.grad, xr.grad)}
        grads.update({n: (p.grad, dict(ref.named_parameters())[n].grad) for n, p in fused.named_parameters()})
        total = torch.cat([w.reshape(-1) for _, w in grads.values()]).norm().item()
        # Training BatchNorm removes any per-channel constant of y: the spatial bias gradient
        # is zero in exact arithmetic, and in bfloat16/float16 it is the rounding of the
        # stored grad_y summed (as in eager): there measured against the whole gradient's size.
        reduced = x.dtype in (torch.bfloat16, torch.float16)
        floors = {n: (total if reduced and n == "spatial_conv.bias" else 1e-3 * total) for n in grads}
        errs.update({f"grad {n}": _rel(a, b, floors[n]) for n, (a, b) in grads.items()})
        errs["running_mean"] = _rel(fused.bn.running_mean, ref.bn.running_mean)
        errs["running_var"] = _rel(fused.bn.running_var, ref.bn.running_var)
    return errs


def module_errors(shape, device: str, dtype: torch.dtype, train: bool, batch: int = 2, frames: int = 4,
                  size: int = 14, seed: int = 0, kink_band: Optional[float] = None) -> Dict[str, float]:
    """SpatioTemporalConv in `dtype` on `device` against the float64 reference block with
    the same state (compare_block; the kink band defaults to the dtype's tolerance)."""
    ref, fused = make_block_pair(shape, dtype, seed)
    x = torch.randn(batch, shape[1], frames, size, size, dtype=torch.float64).to(dtype)
    band = TOLERANCE[dtype] if kink_band is None else kink_band
    return compare_block(fused.to(device), ref, x.to(device), train, band, seed)


def _module_rows(device: str, family: str, dtype: torch.dtype, shapes, tol: float) -> List[Row]:
    rows = []
    for shape in shapes:
        for train in (True, False):
            check = "module train" if train else "module eval"
            try:
                errs = module_errors(shape, device, dtype, train, kink_band=tol)
            except Exception as err:
                rows.append(Row(check, shape[0], device, family, _name(dtype), None, tol, False, str(err)[:200]))
                continue
            worst = max(errs, key=errs.get)
            rows.append(Row(check, shape[0], device, family, _name(dtype), errs[worst], tol, errs[worst] <= tol,
                            f"worst: {worst}"))
    return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------ all of it
Check = Tuple[str, Callable[[], List[Row]]]  # (what it checks, for the progress lines; the check)


def _module_checks(device: str, family: str, cases) -> List[Check]:
    """The block against the reference for each (dtype, tolerance, shapes), train and eval."""
    return [(f"module train and eval, {_name(dt)}" + (" as TF32" if tol == TF32_TOLERANCE else "")
             + f", {len(shapes)} shape{'s' if len(shapes) > 1 else ''}",
             lambda dt=dt, tol=tol, shapes=shapes: _module_rows(device, family, dt, shapes, tol))
            for dt, tol, shapes in cases]


def plan(devices: Sequence[str], quick: bool) -> List[Tuple[str, str, Optional[str], List[Check]]]:
    """(device, family, R2P1D_CUDA_KERNELS, the checks) for each device and kernel family."""
    shapes = QUICK_SHAPES if quick else SHAPES
    f64, f32 = (torch.float64, TOLERANCE[torch.float64], shapes[:1]), (torch.float32, TOLERANCE[torch.float32], shapes)
    out = []
    if "cpu" in devices:
        out.append(("cpu", "cpu", None, [
            ("gradcheck, float64", lambda: _gradcheck_rows("cpu", "cpu")),
            ("opcheck, float64", lambda: _opcheck_rows("cpu", "cpu", torch.float64)),
            ("opcheck, float32", lambda: _opcheck_rows("cpu", "cpu", torch.float32)),
            # bfloat16 on this CPU's path ("CPU bfloat16 path" above; R2P1D_CPU_KERNELS).
            *_module_checks("cpu", "cpu", [f64, f32, (torch.bfloat16, TOLERANCE[torch.bfloat16], shapes)])]))
    if "cuda" in devices:
        out.append(("cuda", "direct", "direct", [
            ("gradcheck, float64", lambda: _gradcheck_rows("cuda", "direct")),
            ("opcheck, float64", lambda: _opcheck_rows("cuda", "direct", torch.float64)),
            *_module_checks("cuda", "direct", [f64, f32])]))
        if tensor_core_kernels_built():
            checks = _module_checks("cuda", "tensor-core", [(torch.bfloat16, TOLERANCE[torch.bfloat16], shapes),
                                                           (torch.float16, TOLERANCE[torch.float16], shapes),
                                                           (torch.float32, TF32_TOLERANCE, shapes)])
            checks += [(f"opcheck, {_name(dt)}", lambda dt=dt: _opcheck_rows("cuda", "tensor-core", dt))
                       for dt in (torch.bfloat16, torch.float32)]
            out.append(("cuda", "tensor-core", "tc", checks))
    return out


def resolve_devices(device: str) -> List[str]:
    """``cpu``, ``cuda`` or ``all`` (the CPU, and CUDA when a GPU is visible and the build has
    its kernels). Asking for CUDA where it cannot run is an error saying why."""
    if device not in ("cpu", "cuda", "all"):
        raise ValueError(f"expected --device cpu, cuda or all, got {device!r}")
    want_cuda = device in ("cuda", "all")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this torch "
                         f"({torch.__version__}, CUDA {torch.version.cuda or 'none'})")
    if device == "cuda" and not cuda_built():
        raise ValueError("--device cuda: this r2p1d_ext was built without its CUDA part; rebuild with a GPU visible "
                         "or FORCE_CUDA=1 (README, Install)")
    devices = [] if device == "cuda" else ["cpu"]
    if want_cuda and torch.cuda.is_available() and cuda_built():
        devices.append("cuda")
    return devices


_FAMILY_NAMES = {"cpu": "CPU kernels", "direct": "direct kernels", "tensor-core": "tensor-core kernels"}


def run_checks(device: str = "all", quick: bool = False, progress: Optional[Callable[[str], None]] = None) -> List[Row]:
    """Every check of :func:`plan` for `device`; rows in order. Never raises for a failed
    check: its row says FAIL and why."""
    rows: List[Row] = []
    for dev, family, setting, checks in plan(resolve_devices(device), quick):
        with _kernels(setting):
            for label, check in checks:
                start = time.perf_counter()
                new = check()
                rows += new
                if progress:
                    failed = sum(not r.passed for r in new)
                    progress(f"{dev} ({_FAMILY_NAMES[family]}): {label}: {len(new) - failed} passed"
                             + (f", {failed} FAILED" if failed else "") + f" in {time.perf_counter() - start:.1f} s")
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    head = ("check", "op / block", "device", "family", "dtype", "max error", "tolerance", "result")
    table = [head] + [(r.check, r.what, r.device, r.family, r.dtype, "-" if r.error is None else f"{r.error:.2e}",
                       "-" if r.tolerance is None else f"{r.tolerance:.0e}",
                       ("PASS" if r.passed else "FAIL") + (f"  {r.note}" if r.note and not r.passed else ""))
                      for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in table)
