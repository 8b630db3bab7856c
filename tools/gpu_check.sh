#!/usr/bin/env bash
# `make gpu-check`: everything a GPU machine without network runs, in one command.
#   1. installs the wheels of .whl/ (`make gpu-wheels` fills it where the registry is
#      reachable: the CUTLASS/CuTe headers that a stock PyTorch image lacks);
#   2. builds the extension with every core (CUDA kernels for TORCH_CUDA_ARCH_LIST, 9.0);
#   3. without a GPU: says so and exits 0 (the build is the check);
#   4. runs the tensor-core tests first (tests/test_cuda_tc.py), then the rest of the suite
#      (every test parametrized over "cuda" included), so that a run cut short by its time
#      limit still reports the GPU kernels;
#   5. runs the block benchmark (bf16 with the torch.compile baseline, and fp32 as TF32) and
#      the network benchmark.
# Logs and result JSONs go to ${OUT:-bench/results}: gpu-check.log (the summary), build.log,
# tests.log, block-bf16.{json,png}, block-tf32.json, network-bf16.{json,png}; each is written
# as its step ends. Exit status: non-zero when the build or any test fails. Budget: ~8 minutes
# on an H100 with 16 cores (not yet measured). GPU_CHECK_BENCH=0 skips the benchmarks,
# GPU_CHECK_COMPILE=0 the torch.compile baseline (its compiles take minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
SUMMARY="$OUT/gpu-check.log"
: > "$SUMMARY"
say() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }
status=0

if ls .whl/*.whl > /dev/null 2>&1; then
  say "installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile .whl/*.whl >> "$SUMMARY" 2>&1 \
    || { say "wheel install failed"; exit 1; }
fi

say "building with MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
start=$SECONDS
if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  say "BUILD FAILED after $((SECONDS - start)) s; the end of build.log:"
  grep -E "error|Error" "$OUT/build.log" | head -40 | tee -a "$SUMMARY"
  exit 1
fi
say "built in $((SECONDS - start)) s"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no GPU: the extension builds; no CUDA test or GPU benchmark to run"
  exit 0
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB; cuDNN {torch.backends.cudnn.version()}')" | tee -a "$SUMMARY"

: > "$OUT/tests.log"
for part in "tests/test_cuda_tc.py" "tests --ignore=tests/test_cuda_tc.py"; do
  start=$SECONDS
  # shellcheck disable=SC2086  # $part is a path plus options
  "$PY" -m pytest $part -q -rfE -p no:cacheprovider >> "$OUT/tests.log" 2>&1
  rc=$?
  say "pytest $part: $(tail -1 "$OUT/tests.log") (rc $rc, $((SECONDS - start)) s)"
  [ $rc -eq 0 ] || status=1
done
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -40 | tee -a "$SUMMARY"
if [ "${GPU_CHECK_BENCH:-1}" = 0 ]; then
  say "benchmarks skipped (GPU_CHECK_BENCH=0): exit $status"
  exit $status
fi

bench() {  # name, then the benchmark's arguments
  local name=$1; shift
  local t0=$SECONDS
  if "$PY" "$@" > "$OUT/$name.txt" 2>&1; then
    say "$name: $(grep -E 'geometric-mean|vs eager' "$OUT/$name.txt" | tail -1) ($((SECONDS - t0)) s)"
  else
    say "$name FAILED ($((SECONDS - t0)) s):"; tail -15 "$OUT/$name.txt" | tee -a "$SUMMARY"
  fi
  cat "$OUT/$name.txt" >> "$SUMMARY"
  rm -f "$OUT/$name.txt"
}
compile_args=(--compile --compile-mode default)
[ "${GPU_CHECK_COMPILE:-1}" = 0 ] && compile_args=()
bench block-bf16 bench/bench_block.py --device cuda --dtype bfloat16 --batch 32 --clip-len 16 \
  --warmup 5 --repeats 20 "${compile_args[@]}" --out "$OUT/block-bf16.json"
bench block-tf32 bench/bench_block.py --device cuda --dtype float32 --tf32 --batch 32 --clip-len 16 \
  --warmup 5 --repeats 20 --out "$OUT/block-tf32.json"
rm -f "$OUT/block-tf32.png"  # the device tool returns at most 8 files
bench network-bf16 bench/bench_network.py --device cuda --dtype bfloat16 --batch 16 --clip-len 16 \
  --warmup 3 --repeats 10 --out "$OUT/network-bf16.json"
say "done: exit $status"
exit $status
