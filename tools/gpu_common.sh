# Shared by tools/gpu_check.sh and tools/gpu_bench.sh (sourced, not run): the summary log,
# the wheel install and the build of the extension on a GPU machine.
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
SUMMARY="$OUT/gpu-check.log"
[ -n "${GPU_LOG_APPEND:-}" ] || : > "$SUMMARY"
status=0
t_start=$SECONDS

say() { echo "[gpu $(date +%H:%M:%S) +$((SECONDS - t_start))s] $*" | tee -a "$SUMMARY"; }
section() { say "== $*"; }

# The wheels of .whl/, the CUDA build forced, every core; says which nvcc and torch CUDA.
build_extension() {
  if ls .whl/*.whl > /dev/null 2>&1; then
    say "installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile .whl/*.whl >> "$SUMMARY" 2>&1 \
      || { say "wheel install failed"; return 1; }
  fi
  local nvcc_version
  nvcc_version=$( (nvcc --version 2>/dev/null || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null) \
    | grep -o 'release [0-9.]*' || echo "not found")
  say "building: FORCE_CUDA=1, MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, nvcc $nvcc_version," \
      "$("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  local start=$SECONDS
  if ! FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
    say "BUILD FAILED after $((SECONDS - start)) s; the errors of build.log:"
    grep -E "error|Error" "$OUT/build.log" | head -40 | tee -a "$SUMMARY"
    return 1
  fi
  say "built in $((SECONDS - start)) s"
}

# 0 with a GPU (and says which); 1, after saying so, without.
require_gpu() {
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no GPU: the extension builds; no CUDA test or GPU benchmark to run"
    return 1
  fi
  "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB; cuDNN {torch.backends.cudnn.version()}')" \
    | tee -a "$SUMMARY"
}

# A benchmark: name, then its arguments; its table and ratios go into the summary.
bench() {
  local name=$1; shift
  local t0=$SECONDS
  if "$PY" "$@" > "$OUT/$name.txt" 2>&1; then
    say "$name: $(grep -E 'geometric-mean|vs the best' "$OUT/$name.txt" | tail -1) ($((SECONDS - t0)) s)"
  else
    say "$name FAILED ($((SECONDS - t0)) s):"; tail -15 "$OUT/$name.txt" | tee -a "$SUMMARY"
    status=1
  fi
  cat "$OUT/$name.txt" >> "$SUMMARY"
  rm -f "$OUT/$name.txt"
}
