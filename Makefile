# One-command set-up: `make test` and `make demo` create .venv, install the dependencies,
# build the extension and run. Override e.g. `make test PYTHON=python3.12 TORCH=2.13.0`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= 2.14.1
TORCHVISION ?= 0.29.1
# GPU archs of the CUDA build (H100/H200); setup.py finds CUDA_HOME from nvcc itself.
export TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS ?= 2

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: all install test demo bench tc-report gpu-wheels gpu-check gpu-bench clean

all: install

# torch 2.14.1 is the CUDA 13 build (so the .cu files compile, with no GPU needed). Two sets,
# so that `make demo` installs only what it runs (pyproject.toml's extras hold the same):
# - base: the build tools and the [train] extra (PyAV, OpenCV, NumPy, tqdm, matplotlib), then
#   nvidia-cutlass (the CUTLASS/CuTe headers of the tensor-core kernels) without its
#   dependencies (they serve its Python generator, which we do not use). NumPy comes first:
#   a later pip run that installs NumPy would print a resolver ERROR about them.
# - test: torchvision (fuse() on its r2plus1d_18), pytest, hypothesis, onnx/onnxscript/
#   onnxruntime (the ONNX export tests) and nvidia-cuda-cuobjdump/-nvdisasm (the SASS of the
#   built kernels for bench/tc_sass.py; the toolkit here lacks them).
CUTLASS ?= 4.2.0.0
CUDA_TOOLS ?= 13.2.86
$(VENV)/.deps-base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==$(TORCH)" setuptools ninja pybind11 numpy av opencv-python-headless tqdm matplotlib
	$(PIP) install --no-deps "nvidia-cutlass==$(CUTLASS)"
	touch $@

$(VENV)/.deps-test: $(VENV)/.deps-base
	$(PIP) install "torchvision==$(TORCHVISION)" pytest hypothesis onnx onnxscript onnxruntime
	$(PIP) install --no-deps "nvidia-cuda-cuobjdump==$(CUDA_TOOLS)" "nvidia-cuda-nvdisasm==$(CUDA_TOOLS)"
	touch $@

# Incremental: ninja rebuilds only the sources that changed (setup.py keeps the objects in
# build/temp-cpu or build/temp-cuda). Without a GPU the build is CPU-only unless FORCE_CUDA=1
# (.ci/run sets it, so CI compiles the CUDA code too).
install: $(VENV)/.deps-base
	$(PIP) install --no-build-isolation -e .

test: install $(VENV)/.deps-test
	$(PY) -m pytest tests -q

# The main job: generate the synthetic motion videos (once), train a small R(2+1)D on the
# fused CPU kernels, evaluate it. Writes runs/demo/{metrics.json,curves.png,confusion.png}.
DEMO_DATA ?= data/synthetic
DEMO_RUN  ?= runs/demo
DEMO_ARGS ?= --arch r2plus1d_10 --epochs 8 --batch-size 8 --clip-len 8 --short-side 64 \
	--crop-size 56 --lr 0.01 --no-hflip --workers 1
demo: install
	test -f $(DEMO_DATA)/.complete || $(PY) -m r2p1d_ext.cli make-synthetic $(DEMO_DATA)
	$(PY) -m r2p1d_ext.cli train --data $(DEMO_DATA) --out $(DEMO_RUN) $(DEMO_ARGS)
	$(PY) -m r2p1d_ext.cli eval --data $(DEMO_DATA) --checkpoint $(DEMO_RUN)/checkpoint.pt --workers 1

# The tensor-core kernels measured without a GPU (bench/tc_report.py): every GEMM of
# R(2+1)D-18 on the emulator's counters and the SASS; bench/results/<date>-tc-report.*.
tc-report: install $(VENV)/.deps-test
	$(PY) bench/tc_report.py

bench: install $(VENV)/.deps-test
	$(PY) bench/bench_block.py
	$(PY) bench/bench_network.py
	$(PY) bench/bench_inference.py
	$(PY) bench/bench_block.py --dtype bfloat16
	$(PY) bench/bench_inference.py --dtype bfloat16
	$(PY) bench/bench_data.py
	$(PY) bench/bench_predict.py

# The GPU machines have no network: the wheels their stock PyTorch image lacks travel in
# .whl/ (git-ignored). Run this where the package registry is reachable.
gpu-wheels:
	mkdir -p .whl
	python3 -m pip download --no-deps --only-binary=:all: -d .whl "nvidia-cutlass==$(CUTLASS)"
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl av

# On a GPU machine (no network, PyTorch installed), in one device call of under 7 minutes:
# install .whl/, build with every core (CUDA forced), run the CUDA tests, compute-sanitizer
# on every kernel and a short benchmark; logs and JSON to $$OUT (default bench/results).
# Without a GPU it builds and says so. `make gpu-check DRY_RUN=1` prints the steps and their
# time estimate and runs nothing; GPU_CHECK_BENCH=0 skips the benchmark (tools/gpu_check.sh).
# `make gpu-bench` then runs the GPU benchmarks, Nsight Compute against the emulator's
# counters and writes the results file <date>-<gpu>.json (tools/gpu_bench.sh; DRY_RUN=1
# works the same; REHEARSE=1 runs its steps here on the CPU at a tiny size, ncu left out, to
# try the script and the merge). COMMIT names the commit in the results where the tree travels without
# its .git (the device tool copies the working tree): `make gpu-bench COMMIT=abc1234`.
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null)
gpu-check:  # every core (this Makefile's MAX_JOBS default of 2 is for the 2-core machines)
	GPU_CHECK_DRY_RUN=$${GPU_CHECK_DRY_RUN:-$(DRY_RUN)} MAX_JOBS=$${GPU_MAX_JOBS:-$$(nproc)} R2P1D_COMMIT=$(COMMIT) \
	  bash tools/gpu_check.sh

gpu-bench:
	GPU_CHECK_DRY_RUN=$${GPU_CHECK_DRY_RUN:-$(DRY_RUN)} MAX_JOBS=$${GPU_MAX_JOBS:-$$(nproc)} R2P1D_COMMIT=$(COMMIT) \
	  GPU_BENCH_REHEARSE=$${GPU_BENCH_REHEARSE:-$(REHEARSE)} bash tools/gpu_bench.sh

clean:
	rm -rf build *.egg-info r2p1d_ext/_C*.so
