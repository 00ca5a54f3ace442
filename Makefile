# graphflow's two everyday commands, each doing all the setup it needs:
#   make run    runs workflows/txt2img.json on the embedded model and writes out/txt2img_00001.png
#   make test   runs the test suite
# torch: the CPU build by default (pinned, so pip never pulls a multi-GB CUDA build). With an NVIDIA
# GPU, choose a CUDA build instead, e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
# (or install torch into .venv yourself first: setup keeps an installed torch).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
WORKFLOW ?= workflows/txt2img.json

.PHONY: setup run test bench clean

$(BIN)/graphflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/graphflow

run: setup
	$(BIN)/graphflow run $(WORKFLOW) --out out

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) out .graphflow-cache *.egg-info
