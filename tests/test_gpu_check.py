"""`make gpu-check` and `make gpu-bench` each fit one device call: the dry run (no GPU,
nothing built) prints the steps and their estimated time on the GPU machine, and the
estimate is within the budget, 7 minutes and 6.5 (tools/gpu_check_estimate.py has the
measurements and assumptions behind it); `make gpu-bench REHEARSE=1` runs its steps here."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_prints_an_estimate_within_budget():
    out = subprocess.run(["make", "-s", "gpu-check", "DRY_RUN=1", f"PY={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PY=sys.executable))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for step in ("build:", "CUDA tests:", "compute-sanitizer:", "short benchmark:"):
        assert step in text, text
    total = re.search(r"(\d+) s  in all \(([\d.]+) min; the budget is 7 min\)", text)
    assert total and int(total.group(1)) <= 7 * 60, text
    assert "OVER" not in text


def test_bench_dry_run_fits_what_the_check_leaves():
    """`make gpu-bench DRY_RUN=1`: its steps and their estimate, within the 6.5 minutes that the
    machine's start and gpu-check's 7 leave of the 15."""
    out = subprocess.run(["make", "-s", "gpu-bench", "DRY_RUN=1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PY=sys.executable))
    assert out.returncode == 0, out.stdout + out.stderr
    for step in ("block bf16", "r2plus1d_18 fused vs torchvision", "ncu:", "TF32", "results file"):
        assert step in out.stdout, out.stdout
    total = re.search(r"(\d+) s  in all \(([\d.]+) min; the budget is 6.5 min\)", out.stdout)
    assert total and int(total.group(1)) <= 390, out.stdout


def test_bench_rehearsal_runs_every_step_and_writes_the_results_file(tmp_path):
    """`make gpu-bench REHEARSE=1`: the script's steps on the CPU at a tiny size (no compile
    here, to stay quick), the parts merged into the results file and removed, the log saying
    each step: what a GPU run does, short of the GPU and ncu."""
    pytest.importorskip("torchvision")  # the network step's baseline
    env = dict(os.environ, PY=sys.executable, OUT=str(tmp_path), GPU_CHECK_COMPILE="0")
    out = subprocess.run(["make", "-s", "gpu-bench", "REHEARSE=1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    results = [f for f in files if f.endswith(".json")]
    assert len(results) == 1 and "gpu-check.log" in files, files
    assert not {"block-bf16.json", "block-tf32.json", "network-bf16.json"} & set(files)
    with open(tmp_path / results[0]) as f:
        result = json.load(f)
    assert set(result["parts"]) == {"block_bf16", "block_tf32", "network"}
    assert result["speedup"]["net_train_vs_torchvision"] > 0 and "ncu" in result["missing"]
    log = (tmp_path / "gpu-check.log").read_text()
    for step in ("rehearsal", "block-bf16:", "network-bf16:", "ncu: left out", "block-tf32:", "done: exit 0"):
        assert step in log, log
