#!/usr/bin/env bash
# `make gpu-bench`: the GPU benchmarks and the results file, after `make gpu-check` has
# passed, in one device call (`make gpu-bench DRY_RUN=1` prints the steps and their time
# estimate, tools/gpu_check_estimate.py --bench). Most wanted first, each part written as
# it ends, so a call cut short still returns the parts done (bench/gpu_results.py merges
# them anywhere):
#   1. the block in bf16, batch 32 x 16x112x112, the four R(2+1)D-18 stage shapes, with the
#      torch.compile baseline (mode default) and the peak memory: block-bf16.json;
#   2. r2plus1d_18 fused against torchvision's own, channels_last_3d, bf16 autocast, batch
#      16, eager and torch.compile: network-bf16.json;
#   3. Nsight Compute on the two forward GEMMs at conv2_x against the emulator's counters
#      (bench/ncu_compare.py): ncu.csv, ncu-compare.json;
#   4. the block in float32 as TF32 (GPU_BENCH_TF32_COMPILE=1 adds its torch.compile
#      baseline, minutes of compiles): block-tf32.json;
#   5. bench/gpu_results.py merges them into <date>-<gpu>.json + .png (each part kept whole
#      inside it, so the parts are removed after a good merge: the device tool returns 8 files).
# Builds first when the extension is not built. Results and logs go to ${OUT:-bench/results}
# (gpu-check.log gains the summary); GPU_CHECK_COMPILE=0 leaves out every torch.compile
# baseline. R2P1D_COMMIT names the commit where the tree has no .git (the Makefile sets it).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${GPU_CHECK_DRY_RUN:-}" = 1 ]; then
  exec "$PY" tools/gpu_check_estimate.py --bench
fi
GPU_LOG_APPEND=1
source tools/gpu_common.sh

# The sizes of the GPU run; GPU_BENCH_REHEARSE=1 runs the same steps on this machine's CPU
# at a tiny size (float32 blocks, ncu left out), to try the script and the merge where no
# GPU is (tests/test_gpu_check.py).
device=cuda block_dtype=bfloat16
block_size=(--batch 32 --clip-len 16 --warmup 5 --repeats 20)
net_size=(--batch 16 --clip-len 16 --warmup 3 --repeats 10)
if [ "${GPU_BENCH_REHEARSE:-}" = 1 ]; then
  device=cpu block_dtype=float32
  block_size=(--batch 1 --clip-len 2 --crop 32 --warmup 0 --repeats 1 --no-memory)
  net_size=("${block_size[@]}")
  say "rehearsal on the CPU at a tiny size: not a measurement"
else
  if ! "$PY" -c "import r2p1d_ext, torch; assert torch._C._dispatch_has_kernel_for_dispatch_key('r2p1d::fused_eval', 'CUDA')" \
      2> /dev/null; then
    section "building"
    build_extension || exit 1
  fi
  require_gpu || exit 0
fi

section "GPU benchmarks"
compile_args=(--compile --compile-mode default)
[ "${GPU_CHECK_COMPILE:-1}" = 0 ] && compile_args=()
tf32_compile=()
[ "${GPU_BENCH_TF32_COMPILE:-0}" = 1 ] && tf32_compile=("${compile_args[@]}")
bench block-bf16 bench/bench_block.py --device $device --dtype $block_dtype "${block_size[@]}" \
  "${compile_args[@]}" --out "$OUT/block-bf16.json"
bench network-bf16 bench/bench_network.py --device $device --dtype float32 --amp bfloat16 --baseline torchvision \
  "${net_size[@]}" "${compile_args[@]}" --out "$OUT/network-bf16.json"
rm -f "$OUT"/block-bf16.png "$OUT"/network-bf16.png

section "Nsight Compute: the forward GEMMs at conv2_x against the emulator"
start=$SECONDS
if [ $device = cpu ]; then
  say "ncu: left out of the rehearsal"
elif ! command -v ncu > /dev/null; then
  say "ncu not found: skipped"
  status=1
else
  query=$(mktemp)
  ncu --query-metrics > "$query" 2>&1 || say "ncu --query-metrics failed: the whole metric list is asked for"
  metrics=$("$PY" bench/ncu_compare.py --metrics "$query")
  rm -f "$query"
  if ncu --clock-control none --profile-from-start off --print-units base --csv --page raw \
      --metrics "$metrics" --log-file "$OUT/ncu.csv" "$PY" bench/ncu_compare.py --profiled >> "$SUMMARY" 2>&1 \
    && "$PY" bench/ncu_compare.py --csv "$OUT/ncu.csv" --out "$OUT/ncu-compare.json" >> "$SUMMARY" 2>&1; then
    say "ncu: $(grep -E 'rows agree' "$SUMMARY" | tail -1) ($((SECONDS - start)) s)"
  else
    say "ncu comparison FAILED ($((SECONDS - start)) s): see gpu-check.log and ncu.csv"
    status=1
  fi
fi

bench block-tf32 bench/bench_block.py --device $device --dtype float32 --tf32 "${block_size[@]}" \
  "${tf32_compile[@]}" --out "$OUT/block-tf32.json"
rm -f "$OUT"/block-tf32.png

section "results file"
if "$PY" bench/gpu_results.py --parts "$OUT" --command "make gpu-bench" >> "$SUMMARY" 2>&1; then
  say "$(grep -E '^wrote .*\.json' "$SUMMARY" | tail -1)"
  rm -f "$OUT"/block-bf16.json "$OUT"/block-tf32.json "$OUT"/network-bf16.json "$OUT"/ncu-compare.json
else
  say "merging the results FAILED: the parts stay in $OUT"
  status=1
fi
say "done: exit $status"
exit $status
