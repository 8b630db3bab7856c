"""What the benchmarks share (``r2p1d bench`` and the repository's bench/ scripts): the
command-line options and their device defaults, timing (medians after warm-up), the CPU
peak-memory measurement in a fresh process, run metadata, JSON and charts."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from .._cli_common import plural


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_run_options(p: argparse.ArgumentParser, warmup: str, repeats: str) -> None:
    """The options every benchmark takes; `warmup`/`repeats` describe their defaults."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                   help="where to run (default: cuda when a GPU is visible)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                   help="element type of the modules and inputs")
    p.add_argument("--batch", type=_positive, default=None, help="clips per batch; default 4 on CPU, 16 on CUDA")
    p.add_argument("--clip-len", type=_positive, default=None, help="frames per clip; default 8 on CPU, 16 on CUDA")
    p.add_argument("--crop", type=_positive, default=112, help="frame height and width")
    p.add_argument("--threads", type=_positive, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=_count, default=None, help="untimed runs first: " + warmup)
    p.add_argument("--repeats", type=_positive, default=None, help="timed runs (the median is reported): " + repeats)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA float32: let cuDNN's and our convolutions use TF32 tensor cores "
                        "(PyTorch's default for convolutions; off otherwise, for exact float32 rows)")


def configure(args, warmup: tuple, repeats: tuple):
    """Applies --threads and the GPU numerics (cudnn.benchmark, TF32 only with --tf32, for
    the baselines and our kernels alike), and fills in the device defaults: batch, clip_len,
    warmup and repeats ((cpu, gpu) pairs for the last two)."""
    on_gpu = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    args.batch = args.batch or (16 if on_gpu else 4)
    args.clip_len = args.clip_len or (16 if on_gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else warmup[on_gpu]
    args.repeats = args.repeats if args.repeats is not None else repeats[on_gpu]
    return on_gpu


def timer(device, warmup, repeats):
    """run(fn, compiled=False): the median of `repeats` timed calls after `warmup` untimed
    ones (CUDA events on a GPU), in seconds; a torch.compile'd `fn` gets at least one untimed
    call, so that its compilation is never timed."""
    def run(fn, compiled=False):
        for _ in range(max(warmup, 1) if compiled else warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(); fn(); end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def geomean(values):
    """The geometric mean of positive numbers, or None for none."""
    values = list(values)
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def as_speed(ratio: float, than: str = "") -> str:
    """A time ratio (the other's time / ours) in words: "1.37x faster", "2.70x slower" (ratio
    0.37), "as fast" within 0.5%; `than` names the other ("... than eager")."""
    tail = f" than {than}" if than else ""
    if abs(ratio - 1) < 0.005:
        return f"as fast as {than}" if than else "as fast"
    if ratio > 1:
        return f"{ratio:.2f}x faster{tail}"
    return f"{1 / ratio:.2f}x slower{tail}"


def progress(iterable, desc):
    """`iterable` under a tqdm bar, or bare where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is the [train] extra's; the kernels-only install runs without bars
        return iterable
    return tqdm(iterable, desc=desc, unit=desc.rstrip("s"))


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def resident_growth_mb(fn):
    """How far fn() raises this process's resident high-water mark above where it starts,
    in MB: its activations, gradients, temporaries and kernel scratch, plus first-call
    library buffers. Linux: writing 5 to /proc/self/clear_refs resets VmHWM to VmRSS. Run
    it in a fresh process (peak_in_child) so earlier work does not hide the peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def peak_in_child(module, *args):
    """There is no CPU allocator high-water mark in PyTorch, so each measurement runs
    `python -m module --peak-child args...` in its own process, which prints the MB last."""
    out = subprocess.run([sys.executable, "-m", module, "--peak-child", *map(str, args)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def commit():
    """The r2p1d_ext source tree's HEAD short hash, with "+changes" when tracked files differ
    from it (the results then belong to the commit that adds them); R2P1D_COMMIT where the
    tree is a copy without its .git (the GPU machine's: `make gpu-bench COMMIT=...`);
    "unknown" for an installed package outside a git checkout."""
    tree = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fallback = os.environ.get("R2P1D_COMMIT") or "unknown"
    if not os.path.isfile(os.path.join(tree, "setup.py")):  # site-packages: not our checkout
        return fallback
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=tree,
                                       stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True,
                                        cwd=tree, stderr=subprocess.DEVNULL).strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return fallback


def cpu_name():
    """The CPU model (/proc/cpuinfo's model name; platform.processor() is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({plural(torch.get_num_threads(), 'thread')})"


def compile_static(module, mode=None):
    """torch.compile of a baseline with static shapes (each benchmarked shape gets its own
    graph, as a user who compiles for one input size does) and room for all of them: past
    Dynamo's recompile limit (8 graphs per function by default) the module would run eagerly
    without a word, and the "compiled" row would time eager PyTorch."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # the older name
    setattr(cfg, name, max(getattr(cfg, name), 64))
    return torch.compile(module, mode=mode, dynamic=False)


SLOW_PATHS = ("slow_conv", "vol2col", "col2vol")  # ATen's fallback convolutions (docs/benchmarks.md)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Process-level stderr (file descriptor 2) to /dev/null for the block: some PyTorch
    builds' profiler prints a line at every start and stop from C++. Python exceptions
    still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def slow_kernels(fn):
    """The names of ATen's slow fallback convolutions (im2col-style, not cuDNN or oneDNN)
    that one call of fn() runs, from the operator records of torch.profiler (the CPU-side
    ops, which name the path on either device): a baseline on that path is not what a user
    of a tuned PyTorch gets, and the benchmark's table says so."""
    from torch.profiler import ProfilerActivity, profile
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if any(p in e.name for p in SLOW_PATHS)})


def _autocast(x, amp):
    """torch.autocast in `amp` (a dtype) on x's device; off for None."""
    return torch.autocast(x.device.type, dtype=amp, enabled=amp is not None)


def train_step(module, x, loss=lambda out: out.sum(), amp=None):
    """One forward and backward of `module` on `x` (gradients reset first), as a closure;
    the forward and the loss under autocast in `amp` when given (as mixed-precision training
    runs them: float32 weights, the backward outside autocast)."""
    def fn():
        module.zero_grad(set_to_none=True)
        with _autocast(x, amp):
            out = loss(module(x))
        out.backward()
    return fn


def eval_step(module, x, amp=None):
    """One forward of `module` on `x` without autograd (under autocast in `amp` when given),
    as a closure."""
    def fn():
        with torch.no_grad(), _autocast(x, amp):
            module(x)
    return fn


def pyplot():
    """matplotlib.pyplot with the file backend, or None (matplotlib is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return None
    return plt


def save(result, out):
    """Writes the result as JSON to `out` (creating its folder) and says so."""
    import json
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


def save_figure(fig, title, path):
    """Titles, lays out and writes a chart, and says so."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
