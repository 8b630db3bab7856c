"""The off-GPU counters of the tensor-core kernels (bench/tc_report.py, csrc/emulate/counters.h)
on R(2+1)D-18's first conv2_x and conv4_x layers: what docs/tensor_cores.md
states about the kernels holds, and the counters themselves count what they say (a known
conflicted access pattern reads as conflicted)."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    import tc_report

    out = tmp_path_factory.mktemp("report") / "r"
    # The full-size layers (batch 32 x 16 x 112x112), one CTA of each grid: about 40 s.
    args = ["--layers", "conv2_x.0.1", "conv4_x.0.1", "--sample", "1", "--no-sass", "--label", "test",
            "--out", str(out)]
    found = tc_report.main(args)
    with open(str(out) + ".json") as f:
        assert len(json.load(f)["rows"]) == len(found)
    assert os.path.exists(str(out) + ".md")
    return found


def _rows(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_every_gemm_of_the_layers_is_reported(rows):
    # conv2_x.0.1 (64 -> 144 -> 64 channels) and conv4_x.0.1 (strided, 128 -> 460 -> 256): six
    # GEMMs each, and the two forwards in TF32 too.
    assert len(rows) == 2 * (6 + 2)
    for r in rows:
        launches = r["counts"]
        assert launches["ctas_counted"] >= 1 and launches["mmas"] > 0, r["gemm"]


def test_main_loop_has_no_bank_conflicts(rows):
    """The operand stores (cp.async and register path) and the fragment loads take exactly
    the ideal wavefronts: 1.00 (csrc/tc/layouts.h)."""
    for r in rows:
        s = r["summary"]
        where = f"{r['layer']} {r['gemm']} {r['plan']['elem']}"
        assert s["smem_store"] == pytest.approx(1.0), f"{where}: operand stores {s['smem_store']}"
        assert s["smem_frag"] == pytest.approx(1.0), f"{where}: fragment loads {s['smem_frag']}"


def test_aligned_channels_load_16_bytes_at_full_sector_efficiency(rows):
    """conv2_x's channels (64 in, 144 mid) are multiples of 8: every operand of its bf16
    GEMMs is read in 16-byte pieces. Its K-major loads (rows are pixels) use every byte of
    the sectors they touch."""
    for r in _rows(rows, layer="conv2_x.0.1"):
        if r["plan"]["elem"] != "bf16":
            continue
        assert r["summary"]["load_widths"] == "16", f"{r['gemm']}: {r['summary']['load_widths']}"
        if r["gemm"] in ("spatial_fprop", "temporal_fprop", "temporal_dgrad"):
            assert r["summary"]["load_efficiency"] >= 0.99, f"{r['gemm']}: {r['summary']['load_efficiency']}"


def test_460_channels_load_at_least_8_bytes(rows):
    """conv4_x.0.1's 460 mid channels (920 bytes a pixel in bf16, 8 past a 16-byte multiple)
    are read in 8-byte pieces, not element by element, wherever y or its gradient is read."""
    for r in _rows(rows, layer="conv4_x.0.1"):
        if r["plan"]["elem"] == "bf16" and r["gemm"] != "spatial_fprop":
            assert min(int(w) for w in r["summary"]["load_widths"].split("/")) >= 8, \
                f"{r['gemm']}: {r['summary']['load_widths']}"


def test_padded_share_matches_the_plan_and_stays_under_15_percent(rows):
    for r in rows:
        assert r["summary"]["padded"] == pytest.approx(r["plan"]["padded"], abs=1e-6), r["gemm"]
        if r["plan"]["elem"] == "bf16":
            assert r["summary"]["padded"] <= 0.15, f"{r['layer']} {r['gemm']}: {r['summary']['padded']:.3f}"


def test_counters_see_bank_conflicts_and_scattered_sectors(monkeypatch):
    """A mutation that puts every chunk of a K-major tile in one bank group (the swizzle off)
    reads as 4-way conflicted stores; the counters are not a constant."""
    monkeypatch.setenv("R2P1D_EMULATOR_COUNTERS", "on")
    monkeypatch.setenv("R2P1D_EMULATOR_SAMPLE", "1")
    emu = torch.ops.r2p1d_tc_emulate
    emu.counters()
    x = torch.zeros(1, 64, 1, 16, 16, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    w = torch.zeros(64, 64, 1, 3, 3, dtype=torch.bfloat16)
    emu.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    good = [x for x in json.loads(emu.counters()) if x["kernel"] == "spatial_fprop"][0]
    monkeypatch.setenv("R2P1D_EMULATOR_MUTATION", "no_swizzle")
    emu.spatial_conv_stats(x, w, None, [1, 1], [1, 1])
    bad = [x for x in json.loads(emu.counters()) if x["kernel"] == "spatial_fprop"][0]

    def frag_ratio(launch):
        cls = [c for c in launch["classes"] if c["space"] == "shared" and c["phase"] in ("frag_a", "frag_b")]
        return sum(c["wavefronts"] for c in cls) / sum(c["ideal_wavefronts"] for c in cls)

    assert frag_ratio(good) == pytest.approx(1.0)
    assert frag_ratio(bad) >= 2.0


def test_sass_main_loops_have_no_64_bit_division_and_no_spill():
    """From the SASS of the built kernels (bench/tc_sass.py): every tensor-core kernel has a
    main loop with HMMAs, no call in it (nvcc's 64-bit division is a call) and no local
    memory access anywhere."""
    import tc_sass

    if tc_sass.tools() is None:
        pytest.skip("needs cuobjdump and nvdisasm (make installs nvidia-cuda-cuobjdump/-nvdisasm)")
    try:
        kernels = tc_sass.analyse()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not kernels:
        pytest.skip("a CPU-only build: no tensor-core kernels")
    problems = []
    for name, info in kernels.items():
        sig = tc_sass.signature(name)
        if sig is None:
            problems.append(f"{name}: not a GEMM bench/tc_sass.py recognises")
        if not info["loop"]:
            problems.append(f"{sig}: no main loop with HMMA")
        elif info["loop"].get("call", 0):
            problems.append(f"{sig}: {info['loop']['call']} calls (64-bit divisions) in the main loop")
        if info["spill_insns"] or info.get("local", 0):
            problems.append(f"{sig}: {info['spill_insns']} local-memory instructions")
    assert len(kernels) == 111, len(kernels)
    assert not problems, "\n".join(problems[:20])
