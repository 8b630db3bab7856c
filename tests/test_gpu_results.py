"""What `make gpu-bench` produces, checked without a GPU: the results file that
bench/gpu_results.py merges from the benchmarks' parts (every key the GPU goals name, the
goals' directions, what is missing), the README section written from it, the torchvision
baseline of the network benchmark, the block's frames-as-2-D baseline and slow-path
detection, and bench/ncu_compare.py's reading of Nsight Compute's
CSV against the emulator's counters (on a CSV written here in ncu's raw-page layout: the
real ncu output is first read on a GPU machine)."""
import argparse
import copy
import csv
import io
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_results  # noqa: E402
import ncu_compare  # noqa: E402

from r2p1d_ext.tools import bench, network_bench  # noqa: E402

TINY = dict(device="cpu", dtype="float32", batch=1, clip_len=2, crop=32, threads=None, warmup=0, repeats=1,
            no_memory=True, tf32=False, compile=False, compile_mode=None)


# ------------------------------------------------------------------ the parts, for real
@pytest.fixture(scope="module")
def parts():
    """The three benchmark parts at a tiny size on the CPU (the same functions as on a GPU)."""
    pytest.importorskip("torchvision")
    block = bench.run_block(argparse.Namespace(**TINY, stages="conv5_x", no_channels_last=False, out=None))
    network = bench.run_network(argparse.Namespace(**TINY, arch="r2plus1d_18", baseline="torchvision",
                                                   amp=None, engines=False, out=None))
    return {"block_bf16": block, "block_tf32": copy.deepcopy(block), "network": network, "ncu": None}


def test_the_torchvision_baseline_runs_torchvisions_model_and_its_fused_copy(parts):
    net = parts["network"]
    assert net["baseline"] == "torchvision"
    assert list(net["rows"]) == ["fused", "torchvision", "torchvision_cl"]
    best = min(net["rows"][i]["train_ms"] for i in ("torchvision", "torchvision_cl"))
    assert net["train_vs_torchvision"] == pytest.approx(best / net["rows"]["fused"]["train_ms"])


def test_fused_torchvision_network_computes_torchvisions_function():
    """The fused row is fuse() of the very model it is compared with: same weights, same clips,
    same output."""
    pytest.importorskip("torchvision")
    shape = (1, 3, 2, 16, 16)
    (tv, x, _), (fused, x2, _) = (network_bench.build_network(i, "r2plus1d_18", "cpu", torch.float64, shape,
                                                              "torchvision") for i in ("torchvision", "fused"))
    assert type(tv).__module__.startswith("torchvision")
    torch.testing.assert_close(x2, x, rtol=0, atol=0)
    tv.eval(); fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x2), tv(x), rtol=1e-9, atol=1e-9)


def test_peak_memory_children_take_the_new_baselines():
    """The CPU peak memory runs each implementation in a fresh process (`python -m
    r2p1d_ext.tools.bench --peak-child ...`): the torchvision rows and eager_2d reach it."""
    pytest.importorskip("torchvision")
    from r2p1d_ext.tools.timing import peak_in_child
    # (a step this small may fit in memory the process already holds: the growth is >= 0)
    assert peak_in_child(network_bench.CHILD, "network", "torchvision_cl", "r2plus1d_18", "1,3,2,32,32", "float32",
                         "bfloat16", "torchvision") >= 0
    assert peak_in_child(network_bench.CHILD, "block", "eager_2d", 64, "1,64,2,8,8", "float32") >= 0


def test_torchvision_baseline_errors_name_what_was_expected():
    pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match="expected an --arch that torchvision.models.video has"):
        network_bench.build_network("torchvision", "r2plus1d_10", "cpu", torch.float32, (1, 3, 2, 16, 16),
                                    "torchvision")
    args = argparse.Namespace(**{**TINY, "dtype": "bfloat16"}, arch="r2plus1d_18", baseline="torchvision",
                              amp="bfloat16", engines=False, out=None)
    with pytest.raises(ValueError, match="--amp bfloat16: expected --dtype float32"):
        network_bench.run_network(args, "test")


def test_results_file_has_every_key_and_the_readme_section(parts, tmp_path):
    result = gpu_results.merge(parts, "make gpu-bench")
    for key in ("device", "torch", "cudnn", "commit", "date", "command", "rows", "network", "train_peak_mem_ratio",
                "speedup", "floor", "goals", "ncu", "missing", "parts"):
        assert key in result, key
    assert set(result["speedup"]) == {"block_train_vs_eager", "block_train_vs_compile", "block_eval_vs_eager",
                                      "net_train_vs_torchvision", "net_infer_vs_torchvision"}
    assert {r["precision"] for r in result["rows"]} == {"bf16", "tf32"}
    assert result["speedup"]["net_train_vs_torchvision"] == parts["network"]["train_vs_torchvision"]
    # No compile, no memory, not the 32 x 16-frame size, no ncu part: each is said, not invented.
    for key in ("block_train_vs_compile", "train_peak_mem_ratio", "floor", "ncu", "part ncu-compare.json"):
        assert key in result["missing"], key
    assert result["floor"] is None and result["train_peak_mem_ratio"] is None

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{gpu_results.BEGIN}\nno GPU figure yet\n{gpu_results.END}\n\nafter\n")
    path = tmp_path / "2026-12-06-h100.json"
    path.write_text(json.dumps(result))
    gpu_results.write_readme(str(path), str(readme))
    text = readme.read_text()
    assert "no GPU figure yet" not in text and text.endswith("\n\nafter\n")
    assert "| block training vs eager |" in text and "(2026-12-06-h100.png)" in text
    assert "| conv5_x | tf32 |" in text and "Not measured in this run:" in text


def test_goals_compare_in_their_direction_and_the_floor_is_a_fraction():
    rows = [{"stage": s, "fused_eval_ms": 0.88, "fused_train_peak_mb": 60.0, "eager_train_peak_mb": 100.0,
             "eager_cl_train_peak_mb": 80.0} for s in ("conv2_x", "conv3_x")]
    block = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "commit": "abc", "batch": 32, "clip_len": 16,
             "rows": rows, "speedup": {"block_train_vs_eager": 1.6, "block_train_vs_compile": 1.1,
                                       "block_eval_vs_eager": 2.5}}
    net = {"device": block["device"], "torch": "2.11.0", "commit": "abc", "arch": "r2plus1d_18", "shape": [16],
           "amp": "bfloat16", "baseline": "torchvision", "compile_mode": "default", "rows": {},
           "train_vs_torchvision": 1.4, "eval_vs_torchvision": 1.2, "peak_vs_torchvision": 0.65}
    result = gpu_results.merge({"block_bf16": block, "block_tf32": None, "network": net, "ncu": None}, "x")
    met = {g["key"]: g["met"] for g in result["goals"]}
    assert met == {"block_train_vs_eager": True, "block_train_vs_compile": False, "block_eval_vs_eager": True,
                   "net_train_vs_torchvision": True, "net_infer_vs_torchvision": False,
                   "train_peak_mem_ratio": True}
    assert result["floor"]["fraction"] == pytest.approx(0.44 / 0.88)
    assert result["block_train_peak_mem_ratio"] == pytest.approx(0.75)
    assert gpu_results.gpu_slug(block["device"]) == "h100" and gpu_results.gpu_slug("NVIDIA H200") == "h200"
    with pytest.raises(ValueError, match="no benchmark part found"):
        gpu_results.merge({"block_bf16": None, "block_tf32": None, "network": None, "ncu": None}, "x")


# ------------------------------------------------------------------ the block's baselines
def test_frames_conv2d_baseline_is_the_reference_block():
    """eager_2d runs the (1,3,3) conv as a 2-D conv over the frames of a channels_last_3d
    input: the same function and gradients as the reference block, on a zero-copy view."""
    from r2p1d_ext import reference
    torch.manual_seed(0)
    ref = reference.SpatioTemporalConv(5, 6, 3, stride=(1, 2, 2), padding=1).double()
    x = torch.randn(2, 5, 3, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [ref(xs[0]), bench.FramesConv2dBlock(ref)(xs[1])]
    torch.testing.assert_close(outs[1], outs[0])
    g = torch.randn_like(outs[0])
    grads = [torch.autograd.grad(o, [xi] + list(ref.parameters()), g) for o, xi in zip(outs, xs)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)
    frames = x.permute(0, 2, 1, 3, 4).reshape(6, 5, 9, 7)
    assert frames.data_ptr() == x.data_ptr() and frames.is_contiguous(memory_format=torch.channels_last)


def test_slow_kernels_names_atens_fallback_convolution():
    """float64 3-D convolutions have no oneDNN kernel on the CPU: ATen's slow path, named;
    the fused block's own ops are not convolutions at all."""
    from r2p1d_ext.tools.timing import slow_kernels
    conv = torch.nn.Conv3d(4, 4, 3, padding=1).double()
    x = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    assert any("slow_conv" in name for name in slow_kernels(lambda: conv(x)))
    from r2p1d_ext import SpatioTemporalConv
    assert slow_kernels(lambda: SpatioTemporalConv(4, 4, 3, padding=1).double()(x)) == []


# ------------------------------------------------------------------ ncu against the emulator
@pytest.fixture(scope="module")
def launches():
    import r2p1d_ext  # noqa: F401  (the emulator's ops)
    return {g: ncu_compare.emulated(g) for g in ncu_compare.GEMMS}


def _ncu_csv(launches, scale=None, drop=(), names=True):
    """ncu's `--csv --page raw` layout for the two launches, each metric the value per CTA the
    emulator counts times the grid's CTAs (times `scale[metric]` where given): what ncu would
    print if the two agreed exactly."""
    scale = scale or {}
    metrics = [m for m in ncu_compare.WANTED if m not in drop]
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL)
    w.writerow(["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
                "Grid Size", "Device", "CC"] + metrics)
    w.writerow([""] * 11 + ["" for _ in metrics])  # the units row
    kernel = {"spatial_fprop": "void r2p1d::tc::igemm_kernel<Cta<GemmProblem<1, Im2colK<1>, DenseK<1>>>>",
              "temporal_fprop": "void r2p1d::tc::igemm_kernel<Cta<GemmProblem<1, TemporalK<1>, DenseK<1>>>>"}
    for i, gemm in enumerate(ncu_compare.GEMMS):
        launch = launches[gemm]
        values = {}
        for what, (space, op), field, ms, *_ in ncu_compare.ROWS:
            per_cta = ncu_compare._emulator_value(launch, space, op, field)
            present = [m for m in ms if m in metrics]
            for j, m in enumerate(present):  # the first metric of a row holds it all
                values[m] = per_cta * launch["ctas"] * scale.get(m, 1.0) if j == 0 else 0.0
        values["launch__grid_size"] = launch["ctas"]
        values["gpu__time_duration.sum"] = 123456.0
        cells = [f"{values.get(m, 0.0):,.1f}" for m in metrics]  # thousands separators, as ncu prints
        name = kernel[gemm] if names else "igemm_kernel"
        w.writerow([str(i), "1", "python", "h", name, "1", "7", "(128, 1, 1)", f"({launch['ctas']}, 1, 1)",
                    "0", "9.0"] + cells)
    return "==PROF== Connected to process 1\n" + out.getvalue() + "==PROF== Disconnected\n"


def test_ncu_csv_that_matches_the_emulator_agrees(launches, tmp_path):
    path = tmp_path / "ncu.csv"
    path.write_text(_ncu_csv(launches))
    result = ncu_compare.compare(ncu_compare.read_ncu_csv(str(path)), launches)
    assert result["summary"]["rows"] == 2 * len(ncu_compare.ROWS)
    assert result["summary"]["agree"] == result["summary"]["rows"]
    assert result["spatial_fprop"]["ncu_ctas"] == launches["spatial_fprop"]["ctas"]


def test_ncu_differences_and_missing_metrics_are_reported(launches, tmp_path):
    sectors = ncu_compare.G.format("sectors", "ld")
    path = tmp_path / "ncu.csv"
    conflicts = [ncu_compare.B.format(op) for op in ("", "_op_ld", "_op_st", "_op_ldsm")]
    # 20% more load sectors than emulated; no bank-conflict metric at all; kernel names without
    # the problem types (then the launch order says which is which).
    path.write_text(_ncu_csv(launches, scale={sectors: 1.2}, drop=conflicts, names=False))
    result = ncu_compare.compare(ncu_compare.read_ncu_csv(str(path)), launches)
    rows = {r["what"]: r for r in result["spatial_fprop"]["rows"]}
    assert rows["global load sectors"]["agree"] is False and rows["global load sectors"]["ratio"] == pytest.approx(1.2)
    assert rows["global load requests"]["agree"] is True
    assert "ncu" not in rows["shared bank-conflict wavefronts"]
    assert rows["shared bank-conflict wavefronts"]["ncu_missing"] == conflicts[:1]


def test_ncu_metric_list_keeps_what_this_ncu_lists():
    listing = ("Device GH100\n----\nMetric Name                         Metric Description\n"
               "dram__bytes_read                    # of bytes read from DRAM\n"
               "launch__grid_size                   # of CTAs\n")
    assert ncu_compare.metric_list(listing) == ["launch__grid_size", "dram__bytes_read.sum"]
    assert ncu_compare.metric_list("unreadable") == ncu_compare.WANTED
    with pytest.raises(ValueError, match="expected ncu's CSV"):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")
        ncu_compare.read_ncu_csv(path)
