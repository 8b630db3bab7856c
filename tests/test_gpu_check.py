"""`make gpu-check` fits one device call: its dry run (no GPU, nothing built) prints the steps
and their estimated time on the GPU machine, and the estimate is within the 7-minute budget
(tools/gpu_check_estimate.py has the measurements and assumptions behind it)."""
import os
import re
import subprocess
import sys

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
