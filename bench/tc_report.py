#!/usr/bin/env python3
"""The tensor-core kernels measured without a GPU: for every GEMM of every R(2+1)D-18 layer
(batch 32 x 16 x 112x112, bf16; TF32 for the forwards too), one table of
  - the plan: tile, grid, K splits, and the padded share of the MMA work;
  - what Nsight Compute's memory counters would report, computed by the CPU emulator from
    the addresses the CTA code forms (csrc/emulate/counters.h): shared-memory wavefronts per
    request against the ideal (1.00 = no bank conflicts) for the operand stores, the fragment
    loads and the epilogue; global sectors against the bytes requested (sector efficiency)
    and the access widths of the loads and stores; bytes moved from global memory per CTA
    (an output tile) and per MMA;
  - from the SASS of the built extension (bench/tc_sass.py): per kernel, registers, stack,
    spills, and its main loop's instructions per HMMA by class (static counts: every path
    compiled into the loop, taken or not), with its 64-bit (calls) and 32-bit divisions;
  - a roofline ESTIMATE on an H100 SXM: the GEMM's FLOPs at the bf16 matrix rate and the
    bytes it must move at HBM bandwidth (ROOFLINE below); never a GPU measurement.

The emulator runs --sample CTAs of each grid (spread over it, first and last included) on
full-size tensors; the counters are sums over those CTAs, the ratios theirs.

    python bench/tc_report.py                     # everything: bench/results/<date>-tc-report.{md,json,png}
    python bench/tc_report.py --layers conv2_x --gemms spatial_fprop --sample 1 --out /tmp/r   # a subset
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import r2p1d_ext  # noqa: E402,F401  (loads the library and its emulator ops)
from common import RESULTS, commit, pyplot, save, save_figure  # noqa: E402
import tc_sass  # noqa: E402

GEMMS = ["spatial_fprop", "spatial_dgrad", "spatial_wgrad", "temporal_fprop", "temporal_dgrad", "temporal_wgrad"]
FORWARDS = ["spatial_fprop", "temporal_fprop"]
DTYPES = {"bf16": torch.bfloat16, "tf32": torch.float32}

# The roofline's figures (an estimate: see the module docstring).
ROOFLINE = {
    "device": "H100 SXM (the lent nvidia-h100-x1 machines)",
    "hbm_bytes_per_s": 3.0e12,  # device-to-device copy, bytes read + written (.library/device/KINDS.md)
    "bf16_flops_per_s": 798e12,  # 8192^3 bf16 matrix product through PyTorch (cuBLAS), same page
    "tf32_flops_per_s": 399e12,  # half the bf16 rate: the datasheet's dense TF32/bf16 ratio
    "note": "mma.sync's own rate on Hopper is not measured here and is below the cuBLAS (wgmma) "
            "figure, so the compute floor is optimistic",
}


def layers(batch=32, frames=16, crop=112):
    """The distinct (2+1)D convs of R(2+1)D-18 (torchvision layout) with the input each sees
    and how many of the 17 share it: [(name, count, conv module, input shape)]."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from r2p1d_ext.models import build_model
    from r2p1d_ext.module import SpatioTemporalConv

    model = build_model("r2plus1d_18", 400)
    seen = []

    def hook(mod, inputs, _):
        seen.append((mod, tuple(inputs[0].shape)))

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SpatioTemporalConv)]
    with FakeTensorMode(allow_non_fake_inputs=True):
        model(torch.empty(batch, 3, frames, crop, crop))
    for h in handles:
        h.remove()
    out = []
    for mod, shape in seen:
        key = (shape, mod.spatial_conv.out_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding)
        for entry in out:
            if entry[4] == key:
                entry[1] += 1
                break
        else:
            out.append([_short_name(names[mod]), 1, mod, shape, key])
    return [tuple(e[:4]) for e in out]


def _short_name(path):
    """stem, conv2_x.0.1 (layer1.0.conv1), ... for a module path of video_resnet."""
    if path.startswith("stem"):
        return "stem"
    parts = path.split(".")
    layer, block, conv = int(parts[0][5:]), parts[1], parts[2][4:]
    return f"conv{layer + 1}_x.{block}.{conv}"


def _dims(mod, shape):
    """(n, c, t, h, w, mid, out channels, kernel, stride, padding, to, ho, wo) of the conv
    `mod` on input `shape`."""
    n, c, t, h, w = shape
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = mod.kernel_size, mod.stride, mod.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    to = (t + 2 * pt - kt) // st + 1
    return (n, c, t, h, w, mod.spatial_conv.out_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
            to, ho, wo)


def _inputs(mod, shape, dtype, gemm):
    """Full-size inputs of the op that runs `gemm` for the conv `mod` on input `shape`
    (channels-last, zeros: the counters depend on addresses, not values)."""
    n, c, t, h, w, m, o, (kt, kh, kw), (st, sh, sw), (pt, ph, pw), to, ho, wo = _dims(mod, shape)
    cl = torch.channels_last_3d
    z = lambda *s: torch.zeros(s, dtype=dtype).contiguous(memory_format=cl)  # noqa: E731
    vec = lambda k: torch.zeros(k)  # noqa: E731
    if gemm.startswith("spatial"):
        x, ws, y, gy = z(n, c, t, h, w), z(m, c, 1, kh, kw), z(n, m, t, ho, wo), z(n, m, t, ho, wo)
        return dict(x=x, w=ws, y=y, gy=gy, mean=vec(m), gmean=vec(m), gvar=vec(m), stride=[sh, sw],
                    padding=[ph, pw])
    y, go, wt = z(n, m, t, ho, wo), z(n, o, to, ho, wo), z(o, m, kt, 1, 1)
    return dict(y=y, go=go, w=wt, mean=vec(m), scale=vec(m), shift=vec(m), stride=st, padding=pt)


def run_gemm(mod, shape, dtype, gemm, sm_count):
    """Runs the op that launches `gemm` on the emulator (with the counters on) and returns the
    launch's counts."""
    emu = torch.ops.r2p1d_tc_emulate
    a = _inputs(mod, shape, dtype, gemm)
    if gemm == "spatial_fprop":
        emu.spatial_conv_stats(a["x"], a["w"], None, a["stride"], a["padding"], sm_count, -1)
    elif gemm in ("spatial_dgrad", "spatial_wgrad"):
        mask = [gemm == "spatial_dgrad", gemm == "spatial_wgrad", False]
        emu.spatial_conv_backward(a["gy"], a["x"], a["w"], a["y"], a["mean"], a["gmean"], a["gvar"], a["stride"],
                                  a["padding"], mask, sm_count, -1)
    elif gemm == "temporal_fprop":
        emu.temporal_conv_bnrelu(a["y"], a["mean"], a["scale"], a["shift"], a["w"], None, a["stride"], a["padding"],
                                 sm_count, -1)
    else:
        dgrad = gemm == "temporal_dgrad"
        mask = [dgrad] * 4 + [not dgrad, False]
        emu.temporal_conv_bnrelu_backward(a["go"], a["y"], a["mean"], a["scale"], a["shift"], a["w"], a["stride"],
                                          a["padding"], mask, sm_count, -1)
    launches = json.loads(emu.counters())
    main = [x for x in launches if x["kernel"] == gemm]
    if len(main) != 1:
        raise RuntimeError(f"expected one {gemm} launch, got {[x['kernel'] for x in launches]}")
    # The other counted launches: the reduction of split-K partials ("<gemm>:finalize").
    main[0]["other_launches"] = [x for x in launches if x["kernel"] != gemm]
    return main[0]


def padded_share(plan):
    """The share of the MMA work that falls outside the GEMM: tiles past its rows and
    columns, and K past its depth (each split rounded up to the K step the kernel runs)."""
    rows, cols, depth = plan["rows"], plan["cols"], plan["depth"]
    step = plan["k_step"]
    k_run = 0
    for s in range(plan["splits"]):
        ks = min(plan["split_depth"], depth - s * plan["split_depth"])
        k_run += math.ceil(ks / step) * step
    done = plan["grid_m"] * plan["bm"] * plan["grid_n"] * plan["bn"] * k_run
    return 1 - rows * cols * depth / done


def _classes(launch, **match):
    return [c for c in launch["classes"] if all(c[k] == v for k, v in match.items())]


def _conflict(classes):
    """Wavefronts per request over the ideal (1.00: no bank conflicts), or None."""
    ideal = sum(c["ideal_wavefronts"] for c in classes)
    return sum(c["wavefronts"] for c in classes) / ideal if ideal else None


def _efficiency(classes):
    """Bytes requested over bytes of the sectors moved (1.00: every sector byte used), or None."""
    sectors = sum(c["sectors"] for c in classes)
    return sum(c["bytes"] for c in classes) / (32 * sectors) if sectors else None


def _widths(classes):
    """The access widths used, widest first, e.g. "16" or "8/2" (bytes)."""
    used = [w for i, w in enumerate((1, 2, 4, 8, 16)) if sum(c["widths"][i] for c in classes)]
    return "/".join(str(w) for w in sorted(used, reverse=True)) or "-"


def summarise(launch):
    """The report's numbers for one launch."""
    ctas = launch["ctas_counted"]
    loads = _classes(launch, space="global", op="read", phase="load_a") + \
        _classes(launch, space="global", op="read", phase="load_b")
    all_loads = _classes(launch, space="global", op="read")
    stores = _classes(launch, space="global", op="write")
    moved = 32 * sum(c["sectors"] for c in all_loads + stores)
    mmas = launch["mmas"]
    return dict(
        padded=padded_share(launch["plan"]),
        # Operand tiles are written by the register path (store_*) or by cp.async (its
        # shared-memory side is counted with the load it belongs to: load_*).
        smem_store=_conflict(sum((_classes(launch, space="shared", op="write", phase=ph)
                                  for ph in ("load_a", "load_b", "store_a", "store_b")), [])),
        smem_frag=_conflict(_classes(launch, space="shared", phase="frag_a") +
                            _classes(launch, space="shared", phase="frag_b")),
        smem_epilogue=_conflict(_classes(launch, space="shared", phase="epilogue") +
                                _classes(launch, space="shared", phase="reduce")),
        load_efficiency=_efficiency(loads), load_widths=_widths(loads),
        store_efficiency=_efficiency(stores), store_widths=_widths(stores),
        bytes_per_cta=moved / ctas, bytes_per_mma=moved / mmas if mmas else None,
    )


def gemm_flops_bytes(mod, shape, gemm, elem_bytes):
    """The GEMM's useful FLOPs and the fewest bytes it must move (each operand tensor read
    once, each output written once; weight gradients in float32 partials are not counted)."""
    n, c, t, h, w, m, o, (kt, kh, kw), _, _, to, ho, wo = _dims(mod, shape)
    x, y, out = n * t * h * w * c, n * t * ho * wo * m, n * to * ho * wo * o
    ws, wt = m * c * kh * kw, o * m * kt
    if gemm.startswith("spatial"):
        flops = 2 * n * t * ho * wo * m * c * kh * kw
        tensors = {"spatial_fprop": x + ws + y, "spatial_dgrad": 2 * y + ws + x, "spatial_wgrad": 2 * y + x + ws}[gemm]
    else:
        flops = 2 * n * to * ho * wo * o * m * kt
        tensors = {"temporal_fprop": y + wt + out, "temporal_dgrad": out + wt + 2 * y,
                   "temporal_wgrad": out + y + wt}[gemm]
    return flops, tensors * elem_bytes


def roofline(flops, nbytes, elem):
    rate = ROOFLINE["tf32_flops_per_s" if elem == "tf32" else "bf16_flops_per_s"]
    compute, memory = flops / rate, nbytes / ROOFLINE["hbm_bytes_per_s"]
    return dict(floor_us=1e6 * max(compute, memory), bound="compute" if compute >= memory else "memory",
                compute_us=1e6 * compute, memory_us=1e6 * memory)


def sass_rows(sass, launch):
    """The SASS numbers of the kernel that ran `launch` (None where none matches)."""
    plan = launch["plan"]
    want = (launch["kernel"], plan["elem"], plan["bm"], plan["bn"], plan["column_reduction"])
    for name, info in sass.items():
        if tc_sass.signature(name) == want:
            return info
    return None


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def loop_per_hmma(info):
    if not info or not info.get("loop"):
        return {}
    mix = info["loop"]
    h = mix.get("hmma", 0) or 1
    return {k: mix.get(k, 0) / h for k in ("ldsm", "lds", "sts", "ldg", "ldgsts", "int", "fp32", "branch")} | \
        {"calls": mix.get("call", 0), "div32": mix.get("div32", 0)}


def markdown(rows, meta):
    head = ("| layer | GEMM | elem | tile | grid (m x n x splits) | padded | smem store | smem frag | smem epi | "
            "load eff (widths) | store eff (widths) | KB/CTA | B/MMA | regs | loop per HMMA: LDSM+LDS / LDG(STS) / "
            "INT / FP32 | 64-bit div calls | floor us (bound) |")
    lines = [f"# Tensor-core kernels off the GPU: {meta['label']}", "",
             f"Commit `{meta['commit']}`, {meta['date']}, torch {meta['torch']}, `{meta['command']}`. "
             f"Emulator: {meta['sample']} sampled CTAs per grid, counters of csrc/emulate/counters.h. "
             f"SASS: sm_90 (cuobjdump {meta['sass_tools']}), static main-loop counts. "
             f"Floors: ESTIMATES on an H100 SXM ({ROOFLINE['hbm_bytes_per_s'] / 1e12:.1f} TB/s, "
             f"{ROOFLINE['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s bf16, {ROOFLINE['tf32_flops_per_s'] / 1e12:.0f} "
             f"TF32; {ROOFLINE['note']}), not GPU measurements.", "",
             "smem columns: wavefronts per request over the ideal (1.00 = no bank conflicts); eff: bytes requested "
             "over sector bytes moved.", "", head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        s, p, lp = r["summary"], r["plan"], r["loop"]
        grid = f"{p['grid_m']} x {p['grid_n']} x {p['splits']}"
        loop = (f"{_fmt(lp.get('ldsm', 0) + lp.get('lds', 0), '.1f')} / {_fmt(lp.get('ldg', 0), '.1f')}"
                f"({_fmt(lp.get('sts', 0) + lp.get('ldgsts', 0), '.1f')}) / {_fmt(lp.get('int'), '.0f')} / "
                f"{_fmt(lp.get('fp32'), '.1f')}") if lp else "-"
        lines.append(
            f"| {r['layer']} x{r['count']} | {r['gemm']} | {p['elem']} | {p['bm']}x{p['bn']} | {grid} | "
            f"{100 * s['padded']:.1f}% | {_fmt(s['smem_store'])} | {_fmt(s['smem_frag'])} | {_fmt(s['smem_epilogue'])} | "
            f"{_fmt(s['load_efficiency'])} ({s['load_widths']}) | {_fmt(s['store_efficiency'])} ({s['store_widths']}) | "
            f"{s['bytes_per_cta'] / 1024:.0f} | {_fmt(s['bytes_per_mma'], '.0f')} | "
            f"{r['sass']['registers'] if r['sass'] else '-'} | {loop} | {lp.get('calls', '-') if lp else '-'} | "
            f"{r['roofline']['floor_us']:.0f} ({r['roofline']['bound']}) |")
    return "\n".join(lines) + "\n"


def chart(rows, path, title):
    plt = pyplot()
    if plt is None:
        return
    labels = [f"{r['layer']} {r['gemm']} {r['plan']['elem']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.22 * len(rows) + 1.5), sharey=True)
    ys = range(len(rows))
    axes[0].barh(ys, [100 * r["summary"]["padded"] for r in rows])
    axes[0].set_xlabel("padded MMA work, %")
    axes[1].barh(ys, [max(r["summary"]["smem_store"] or 0, r["summary"]["smem_frag"] or 0) for r in rows])
    axes[1].set_xlabel("worst smem wavefronts / ideal (main loop)")
    axes[2].barh(ys, [r["summary"]["load_efficiency"] or 0 for r in rows])
    axes[2].set_xlabel("global load sector efficiency")
    axes[0].set_yticks(list(ys), labels, fontsize=6)
    axes[0].invert_yaxis()
    save_figure(fig, title, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="*", help="layer names (stem, conv2_x.0.1, ...; a prefix works): default all")
    p.add_argument("--gemms", nargs="*", choices=GEMMS, help="default all six")
    p.add_argument("--sample", type=int, default=3, help="CTAs emulated per grid (default 3)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--sm-count", type=int, default=132, help="the GPU the plans are for (H100 SXM: 132)")
    p.add_argument("--no-tf32", action="store_true", help="bf16 only")
    p.add_argument("--no-sass", action="store_true", help="skip the SASS columns (no cuobjdump, or a CPU build)")
    p.add_argument("--label", default="current kernels")
    p.add_argument("--out", default=None, help="output path without extension (default bench/results/<date>-tc-report)")
    args = p.parse_args(argv)

    os.environ["R2P1D_EMULATOR_COUNTERS"] = "on"
    os.environ["R2P1D_EMULATOR_SAMPLE"] = str(args.sample)
    os.environ.pop("R2P1D_EMULATOR_CHECKS", None)
    torch.ops.r2p1d_tc_emulate.counters()  # drop earlier counts

    sass = {} if args.no_sass else tc_sass.analyse()
    todo = []
    for name, count, mod, shape in layers(args.batch, args.frames, args.crop):
        if args.layers and not any(name.startswith(x) for x in args.layers):
            continue
        for gemm in args.gemms or GEMMS:
            if name == "stem" and gemm == "spatial_dgrad":
                continue  # the clips need no gradient: the stem's input gradient never runs
            for elem in ["bf16"] + ([] if args.no_tf32 or gemm not in FORWARDS else ["tf32"]):
                todo.append((name, count, mod, shape, gemm, elem))
    rows = []
    for name, count, mod, shape, gemm, elem in tqdm(todo, desc="emulating GEMMs", unit="gemm"):
        launch = run_gemm(mod, shape, DTYPES[elem], gemm, args.sm_count)
        flops, nbytes = gemm_flops_bytes(mod, shape, gemm, 4 if elem == "tf32" else 2)
        info = None if args.no_sass else sass_rows(sass, launch)
        if not args.no_sass and info is None:
            raise RuntimeError(f"no kernel in the SASS matches {gemm} {launch['plan']}")
        rows.append(dict(layer=name, count=count, gemm=gemm, shape=list(shape), plan=launch["plan"],
                         ctas=launch["ctas"], summary=summarise(launch), counts=launch, sass=info,
                         loop=loop_per_hmma(info), flops=flops, min_bytes=nbytes,
                         roofline=roofline(flops, nbytes, elem)))
    today = datetime.date.today().isoformat()
    meta = dict(label=args.label, commit=commit(), date=today, torch=torch.__version__,
                command=" ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + (argv or sys.argv[1:])),
                sample=args.sample, sass_tools=(tc_sass.tools() and "found") or "none", roofline=ROOFLINE,
                batch=args.batch, frames=args.frames, crop=args.crop, sm_count=args.sm_count)
    out = args.out or os.path.join(RESULTS, f"{today}-tc-report")
    save(dict(meta=meta, rows=rows), out + ".json")
    with open(out + ".md", "w") as f:
        f.write(markdown(rows, meta))
    print(f"wrote {out}.md")
    chart(rows, out + ".png", f"tensor-core kernels off the GPU ({args.label}, commit {meta['commit']})")
    return rows


if __name__ == "__main__":
    main()
