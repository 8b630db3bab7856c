#!/usr/bin/env bash
# `make gpu-bench`: the long GPU benchmarks, after `make gpu-check` has passed (under 8
# minutes on the 16-core H100 machine): the block in bf16 with the torch.compile baseline
# and its memory, the block in float32 as TF32, and the whole r2plus1d_18 in bf16. Builds
# first when the extension is not built. Results and logs go to ${OUT:-bench/results}
# (gpu-check.log gains the summary); GPU_CHECK_COMPILE=0 leaves out the torch.compile
# baseline, whose compiles take minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
GPU_LOG_APPEND=1
source tools/gpu_common.sh

if ! "$PY" -c "import r2p1d_ext, torch; assert torch._C._dispatch_has_kernel_for_dispatch_key('r2p1d::fused_eval', 'CUDA')" \
    2> /dev/null; then
  section "building"
  build_extension || exit 1
fi
require_gpu || exit 0

section "GPU benchmarks"
compile_args=(--compile --compile-mode default)
[ "${GPU_CHECK_COMPILE:-1}" = 0 ] && compile_args=()
bench block-bf16-compile bench/bench_block.py --device cuda --dtype bfloat16 --batch 32 --clip-len 16 \
  --warmup 5 --repeats 20 "${compile_args[@]}" --out "$OUT/block-bf16-compile.json"
bench block-tf32 bench/bench_block.py --device cuda --dtype float32 --tf32 --batch 32 --clip-len 16 \
  --warmup 5 --repeats 20 --out "$OUT/block-tf32.json"
rm -f "$OUT/block-tf32.png"  # the device tool returns a few files only
bench network-bf16 bench/bench_network.py --device cuda --dtype bfloat16 --batch 16 --clip-len 16 \
  --warmup 3 --repeats 10 --out "$OUT/network-bf16.json"
say "done: exit $status"
exit $status
