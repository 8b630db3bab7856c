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

.PHONY: all install test test-cuda demo bench clean

all: install

# torch 2.14.1 is the CUDA 13 build (so the .cu files compile, with no GPU needed);
# torchvision is test-only (fuse() on its r2plus1d_18); matplotlib draws the benchmark and
# training-curve PNGs.
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==$(TORCH)" "torchvision==$(TORCHVISION)" ninja pybind11 \
		opencv-python-headless tqdm matplotlib pytest hypothesis
	touch $@

# Incremental: ninja rebuilds only the sources that changed.
install: $(VENV)/.deps
	$(PIP) install --no-build-isolation -e .

test: install
	$(PY) -m pytest tests -q

demo: install
	@echo "make demo (train and evaluate on the synthetic video set) arrives with the network/trainer work (issue 3)."
	@exit 2

bench: install
	$(PY) bench/bench_block.py

clean:
	rm -rf build *.egg-info r2p1d_ext/_C*.so
