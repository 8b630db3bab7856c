"""The benchmark scripts run (bench/): each at its smallest sizes, writing its JSON to a
temporary folder. Timings are not checked here (a benchmark's job, not a test's); this
catches a script that no longer imports or runs after the library changes."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "bench_block": ["--stages", "conv5_x", "--batch", "1", "--clip-len", "2", "--crop", "56", "--warmup", "0",
                    "--repeats", "1", "--no-memory"],
    "bench_network": ["--arch", "r2plus1d_10", "--batch", "1", "--clip-len", "2", "--crop", "32", "--warmup", "0",
                      "--repeats", "1", "--no-memory", "--no-engines"],
    "bench_inference": ["--arch", "r2plus1d_10", "--sizes", "1x2", "--crop", "32", "--warmup", "0", "--rounds", "1",
                        "--repeats", "1"],
    "bench_inference-bf16": ["--arch", "r2plus1d_10", "--sizes", "1x2", "--crop", "32", "--warmup", "0",
                             "--rounds", "1", "--repeats", "1", "--dtype", "bfloat16"],
    "bench_data": ["--videos", "1", "--seconds", "1", "--many", "4", "--workers", "1", "--clips", "2", "--repeats", "1"],
    "bench_predict": ["--videos", "1", "--seconds", "1", "--clips", "1", "--batch", "1", "--workers", "1", "--arch",
                      "r2plus1d_10", "--repeats", "1"],
    "bench_sync_bn": ["--batch", "1", "--clip-len", "2", "--crop", "32", "--warmup", "0", "--repeats", "1"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_script_runs(script, tmp_path):
    out = tmp_path / f"{script}.json"
    args = CASES[script] + ["--out", str(out)]
    if script in ("bench_data", "bench_predict"):
        args += ["--data", str(tmp_path / "videos")]
    done = subprocess.run([sys.executable, os.path.join("bench", script.split("-")[0] + ".py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result, f"{script} wrote an empty result"
