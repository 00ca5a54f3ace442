# graphflow's everyday commands, each doing all the setup it needs:
#   make run    runs the shipped txt2img workflow on the embedded model and writes out/txt2img_00001.png
#   make test   runs the test suite
#   make wheel  builds the distribution (graphflow-diffusion) into dist/
# torch: the CPU build by default (pinned, so pip never pulls a multi-GB CUDA build). With an NVIDIA
# GPU, choose a CUDA build instead, e.g.
#   make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
# (or install torch into .venv yourself first: setup keeps an installed torch).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
WORKFLOW ?= txt2img

.PHONY: setup run test bench wheel clean

# A venv made before the distribution was renamed holds it as `graphflow` (the name of an unrelated
# project on the package index): it goes first, with the metadata its editable build left in the checkout,
# or both would register the node library's commands.
$(BIN)/graphflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip uninstall -q -y graphflow 2>/dev/null || true
	rm -rf graphflow.egg-info
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/graphflow

run: setup
	$(BIN)/graphflow run $(WORKFLOW) --out out

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/run_all.py

# offline: the build backend is the venv's setuptools, and no dependency is fetched; build/ goes
# first, or a file deleted from the source would still ship from setuptools' old copy
wheel: setup
	rm -rf build
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) out .graphflow-cache *.egg-info build dist
