#!/usr/bin/env bash
# `make gpu-check`: the first run of the CUDA code on a GPU machine, in one device call
# (under 7 minutes on the 16-core H100 machine; GPU_CHECK_DRY_RUN=1 prints the steps and
# their estimate, tools/gpu_check_estimate.py, and runs nothing):
#   1. installs the wheels of .whl/ (`make gpu-wheels` fills it where the registry is
#      reachable: the CUTLASS/CuTe headers a stock PyTorch image lacks);
#   2. builds the extension with every core, the CUDA part forced (FORCE_CUDA=1: a machine
#      whose nvcc is not found fails here instead of building the CPU-only extension), and
#      says which nvcc and which torch CUDA it builds with;
#   3. without a GPU: says so and exits 0 (the build is the check);
#   4. the CUDA tests: tests/test_cuda_tc.py, then every test parametrized over "cuda"
#      (the CPU suite is CI's job), over pytest-xdist workers;
#   5. `r2p1d check --device cuda --quick`: what a user with a GPU runs to verify the build (every
#      CUDA kernel family and dtype against the reference), its table in check.log;
#   6. compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on one tiny case of
#      every tensor-core and every direct kernel (tools/sanitizer_cases.py);
#   7. a short benchmark: the block in bf16 at batch 32 x 16x112x112, conv2_x and conv3_x,
#      no torch.compile baseline (`make gpu-bench` has the long ones).
# Logs go to ${OUT:-bench/results}: gpu-check.log (the summary), build.log, tests.log,
# check.log, check.json, sanitizer.log, block-bf16.json; each is written as its step ends, so a run cut short still
# reports what it did. Exit status: non-zero when the build, a test or a sanitizer fails.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${GPU_CHECK_DRY_RUN:-}" = 1 ]; then
  exec "$PY" tools/gpu_check_estimate.py
fi
source tools/gpu_common.sh

section "building"
build_extension || exit 1
require_gpu || exit 0

section "CUDA tests"
: > "$OUT/tests.log"
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))
xdist=()
"$PY" -c "import xdist" 2> /dev/null && xdist=(-n "$workers")
for part in "tests/test_cuda_tc.py" "tests -k cuda --ignore=tests/test_cuda_tc.py"; do
  start=$SECONDS
  # shellcheck disable=SC2086  # $part is a path plus options
  "$PY" -m pytest $part "${xdist[@]}" -q -rfE -p no:cacheprovider >> "$OUT/tests.log" 2>&1
  rc=$?
  # rc 5: nothing collected (no test of that selection)
  [ $rc -eq 5 ] && rc=0
  say "pytest $part: $(tail -1 "$OUT/tests.log") (rc $rc, $((SECONDS - start)) s)"
  [ $rc -eq 0 ] || status=1
done
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -40 | tee -a "$SUMMARY"

section "r2p1d check --device cuda --quick"
start=$SECONDS
"$PY" -m r2p1d_ext.cli check --device cuda --quick --json "$OUT/check.json" > "$OUT/check.log" 2>&1
rc=$?
say "r2p1d check --device cuda --quick: $(tail -1 "$OUT/check.log") (rc $rc, $((SECONDS - start)) s)"
grep -E " FAIL" "$OUT/check.log" | head -20 | tee -a "$SUMMARY"
[ $rc -eq 0 ] || status=1

section "compute-sanitizer"
: > "$OUT/sanitizer.log"
if ! command -v compute-sanitizer > /dev/null; then
  say "compute-sanitizer not found: skipped"
  status=1
else
  for tool in memcheck racecheck synccheck initcheck; do
    start=$SECONDS
    # Without the caching allocator every tensor is its own allocation, so memcheck sees an
    # access past a tensor's end; only our kernels (names with r2p1d) are checked.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      --kernel-regex kns=r2p1d "$PY" tools/sanitizer_cases.py tc direct >> "$OUT/sanitizer.log" 2>&1
    rc=$?
    say "compute-sanitizer --tool $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1) (rc $rc, $((SECONDS - start)) s)"
    [ $rc -eq 0 ] || status=1
  done
fi

if [ "${GPU_CHECK_BENCH:-1}" = 0 ]; then
  say "benchmark skipped (GPU_CHECK_BENCH=0): exit $status"
  exit $status
fi
section "short benchmark"
bench block-bf16 bench/bench_block.py --device cuda --dtype bfloat16 --batch 32 --clip-len 16 \
  --stages conv2_x,conv3_x --warmup 5 --repeats 20 --no-memory --out "$OUT/block-bf16.json"
rm -f "$OUT/block-bf16.png"
say "done: exit $status"
exit $status
