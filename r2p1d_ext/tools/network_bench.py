"""The whole-network half of ``r2p1d bench`` (``--network``): a training step and inference
of a whole R(2+1)D built from the fused block, against a baseline of the same network, in
one process on the same input (medians after warm-up, peak memory of a training step).

Two baselines (``--baseline``):
- ``ours`` (the default): our torchvision-layout network built from the unfused reference
  block, contiguous (``eager``) and channels_last_3d (``eager_cl``); on the CPU in float32
  also that network exported to ONNX Runtime and OpenVINO (when installed);
- ``torchvision``: ``torchvision.models.video.<arch>`` itself, contiguous
  (``torchvision``), channels_last_3d (``torchvision_cl``) and, with ``--compile``, the
  latter under torch.compile (``torchvision_cl_compiled``); the fused network is ``fuse()``
  of that same model (same weights), what a user of torchvision runs.

The ratios are against the best baseline row of each measure (time or memory); with
``--amp`` every step runs under torch.autocast with float32 weights, as mixed-precision
training does.
"""
from __future__ import annotations

import datetime
from typing import Any, Dict

import torch
from torch.nn import functional as F

from .. import reference
from ..fuse import fuse
from ..models import ARCHS
from ..module import SpatioTemporalConv
from .timing import (as_speed, commit, compile_static, configure, device_name, eval_step, peak_in_child, progress,
                     pyplot, save_figure, timer, train_step)

OURS = ("fused", "eager", "eager_cl")
TORCHVISION = ("fused", "torchvision", "torchvision_cl")
CHILD = "r2p1d_ext.tools.bench"  # `python -m` it: one peak-memory measurement in a fresh process


def impls(baseline: str, compile_: bool):
    """The implementations timed for `baseline`, fused first."""
    if baseline == "ours":
        return OURS
    return TORCHVISION + (("torchvision_cl_compiled",) if compile_ else ())


def _torchvision_model(arch: str, classes: int):
    try:
        from torchvision.models import video
    except ImportError as e:
        raise ValueError("--baseline torchvision needs torchvision (pip install torchvision)") from e
    if not hasattr(video, arch):
        raise ValueError(f"--baseline torchvision: expected an --arch that torchvision.models.video has "
                         f"(r2plus1d_18), got {arch}")
    return getattr(video, arch)(num_classes=classes)


def build_network(impl, arch, device, dtype, shape, baseline="ours", classes=400, compile_mode=None):
    """The network of `impl` (one of ``impls(baseline, ...)``) and a clip batch with labels,
    seeded identically for every impl: the fused network and its baseline hold the same
    weights and see the same clips."""
    torch.manual_seed(0)
    if baseline == "torchvision":
        model = _torchvision_model(arch, classes)
        if impl == "fused":
            model = fuse(model)
    else:
        conv = SpatioTemporalConv if impl == "fused" else reference.SpatioTemporalConv
        model = ARCHS[arch](num_classes=classes, conv=conv)
    model = model.to(device=device, dtype=dtype)
    # The clips and labels from their own generator: fuse() draws from the global one.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    labels = torch.randint(0, classes, (shape[0],), generator=g).to(device)
    # channels_last_3d: the baselines that name it, and the fused network on a GPU (its
    # kernels' layout); the CPU kernels take either.
    if "_cl" in impl or (impl == "fused" and device == "cuda"):
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    if impl.endswith("_compiled"):
        model = compile_static(model, compile_mode)
    return model, x, labels


def network_train_step(model, x, labels, amp=None):
    return train_step(model, x, lambda logits: F.cross_entropy(logits, labels), amp=amp)


def engine_rows(model, x, reference_out, run, threads):
    """CPU float32 inference of `model` (the unfused network, eval) exported to ONNX, in ONNX
    Runtime and OpenVINO with `threads` threads, on the same input (r2p1d_ext/tools/engines.py);
    per engine its median time and its output's relative error against `reference_out` (the
    model's own eager output)."""
    from . import engines
    rows = {}
    inp = x.numpy()
    for name, (infer, version) in engines.load(model, x, threads).items():
        rows[name] = {"eval_ms": 1e3 * run(lambda: infer(inp)),
                      "rel_err": engines.rel_err(infer(inp), reference_out), "version": version}
    return rows


def ratios(rows: Dict[str, Dict[str, float]], baseline: str) -> Dict[str, float]:
    """Fused against the best baseline row of each measure: time ratios (> 1: fused faster)
    and the peak-memory ratio (< 1: fused smaller). Keys: train_vs_<b>, eval_vs_<b>,
    peak_vs_<b>, where <b> is "eager" for our baseline and "torchvision" for torchvision's."""
    name = "eager" if baseline == "ours" else "torchvision"
    base = [i for i in impls(baseline, True) if i != "fused" and i in rows]
    best = lambda key: min(rows[i][key] for i in base if key in rows[i])  # noqa: E731
    out = {f"train_vs_{name}": best("train_ms") / rows["fused"]["train_ms"],
           f"eval_vs_{name}": best("eval_ms") / rows["fused"]["eval_ms"]}
    if "train_peak_mb" in rows["fused"]:
        out[f"peak_vs_{name}"] = rows["fused"]["train_peak_mb"] / best("train_peak_mb")
    return out


def run_network(args, command: str) -> Dict[str, Any]:
    """Times a training step and inference of the whole network per implementation (the
    model and its input built afresh for each), prints the table; returns the result."""
    dev = args.device
    on_gpu = configure(args, warmup=(1, 5), repeats=(5, 20))
    baseline, amp_name = args.baseline, args.amp
    amp = getattr(torch, amp_name) if amp_name else None
    if amp is not None and args.dtype != "float32":
        raise ValueError(f"--amp {amp_name}: expected --dtype float32 (autocast runs float32 weights), "
                         f"got --dtype {args.dtype}")
    dtype = getattr(torch, args.dtype)
    shape = (args.batch, 3, args.clip_len, args.crop, args.crop)
    run = timer(dev, args.warmup, args.repeats)
    compile_mode = args.compile_mode or "default"
    rows: Dict[str, Any] = {}
    engine_results: Dict[str, Any] = {}
    with_engines = args.engines and not on_gpu and args.dtype == "float32" and baseline == "ours"
    for impl in progress(impls(baseline, args.compile), "implementations"):
        model, x, labels = build_network(impl, args.arch, dev, dtype, shape, baseline, compile_mode=compile_mode)
        model.train()
        compiled = impl.endswith("_compiled")
        row = {"train_ms": 1e3 * run(network_train_step(model, x, labels, amp), compiled)}
        model.eval()
        row["eval_ms"] = 1e3 * run(eval_step(model, x, amp), compiled)
        if on_gpu and not args.no_memory:
            model.train()
            torch.cuda.reset_peak_memory_stats()
            network_train_step(model, x, labels, amp)()
            row["train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        elif not args.no_memory and not compiled:
            row["train_peak_mb"] = peak_in_child(CHILD, "network", impl, args.arch, ",".join(map(str, shape)),
                                                 args.dtype, amp_name or "none", baseline)
        rows[impl] = row
        if impl == "eager" and with_engines:
            with torch.no_grad():  # the model as exported (its running statistics moved in the timed steps)
                eager_out = model.eval()(x)
            engine_results = engine_rows(model, x, eager_out, run, torch.get_num_threads())
        del model, x
    rows.update(engine_results)
    result = {
        "device": device_name(dev), "torch": torch.__version__, "dtype": args.dtype, "amp": amp_name,
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "commit": commit(), "date": datetime.date.today().isoformat(), "command": command,
        "arch": args.arch, "baseline": baseline, "compile_mode": compile_mode if args.compile else None,
        "shape": list(shape), "warmup": args.warmup, "repeats": args.repeats,
        "rows": rows, **ratios(rows, baseline),
    }
    for engine in ("onnxruntime", "openvino"):
        if engine in rows:
            result[f"eval_vs_{engine}"] = rows[engine]["eval_ms"] / rows["fused"]["eval_ms"]
    return result


def print_table(result) -> None:
    precision = f"autocast {result['amp']}" if result.get("amp") else result["dtype"]
    print(f"\n{result['arch']} {tuple(result['shape'])} | {result['device']} | torch {result['torch']} "
          f"| {precision} | commit {result['commit']}")
    print(f"{'impl':24} {'train ms':>10} {'eval ms':>10} {'peak MB':>9}")
    for impl, r in result["rows"].items():
        peak = f"{r['train_peak_mb']:9.0f}" if "train_peak_mb" in r else f"{'-':>9}"
        train = f"{r['train_ms']:10.1f}" if "train_ms" in r else f"{'-':>10}"
        print(f"{impl:24} {train} {r['eval_ms']:10.1f} {peak}")
    name = "eager" if result.get("baseline", "ours") == "ours" else "torchvision"
    line = (f"fused against the best {name}: train {as_speed(result[f'train_vs_{name}'])}, "
            f"eval {as_speed(result[f'eval_vs_{name}'])}")
    if f"peak_vs_{name}" in result:
        line += f", peak memory {result[f'peak_vs_{name}']:.2f}x"
    for engine in ("onnxruntime", "openvino"):
        if f"eval_vs_{engine}" in result:
            line += (f"; eval {as_speed(result[f'eval_vs_{engine}'], engine)} "
                     f"(its output within {result['rows'][engine]['rel_err']:.1e})")
    print(line)


def plot(result, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    names = list(result["rows"])
    keys = [k for k in ("train_ms", "eval_ms", "train_peak_mb") if k in result["rows"][names[0]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        have = [i for i in names if key in result["rows"][i]]
        ax.bar(have, [result["rows"][i][key] for i in have], color=[f"C{names.index(i)}" for i in have])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title({"train_ms": "training step (ms)", "eval_ms": "inference (ms)",
                      "train_peak_mb": "peak memory, training (MB)"}[key])
    precision = f"autocast {result['amp']}" if result.get("amp") else result["dtype"]
    save_figure(fig, f"{result['arch']} {tuple(result['shape'])}, {result['device']}, "
                     f"torch {result['torch']}, {precision}", path)


def peak_child(argv) -> None:
    """In a fresh process: the resident growth of one training step, in MB, printed."""
    from .timing import resident_growth_mb
    impl, arch, shape, dtype, amp, baseline = argv
    model, x, labels = build_network(impl, arch, "cpu", getattr(torch, dtype), tuple(int(v) for v in shape.split(",")),
                                     baseline)
    model.train()
    print(resident_growth_mb(network_train_step(model, x, labels, None if amp == "none" else getattr(torch, amp))))
