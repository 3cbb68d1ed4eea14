# mldm — build / test entry points.
#
#   make install   create .venv and install mldm (editable) with test extras
#   make test      install if needed, then run the default (non-slow) test suite
#   make demo      install if needed, then train image_tiny, sample 512 images, print the metric line
#   make core-demo install if needed, then the diffusion core's demonstration (benchmarks/core_demo.py)
#   make clean     remove build artefacts and caches (keeps .venv)
#   make distclean clean + remove .venv
#
# Overridable: PYTHON, VENV, TORCH_SPEC, DEMO_DIR, DEMO_SEED, PYTEST_ARGS.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
PIP         := $(VPY) -m pip --disable-pip-version-check -q
# this machine's pip config names local mirrors that may be absent; drop pip's notes about them
QUIET_PIP   := 2>&1 | sed -u '/is ignored: it is neither a file nor a directory/d'
# Pinned so pip takes the CPU wheel on local disk; an unpinned torch would pull
# a multi-GB CUDA build. Only used when the venv cannot already import torch.
TORCH_SPEC  ?= torch==2.13.0
STAMP       := $(VENV)/.installed
DEMO_DIR    ?= outputs/demo
DEMO_SEED   ?= 0
MLDM        := $(VPY) -m shared.cli
PYTEST_ARGS ?=

# Nothing is downloaded at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo core-demo clean distclean

install: $(STAMP)

# Create the venv. If the base interpreter already has torch, reuse it (and
# leave it alone) through --system-site-packages.
$(VPY):
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "mldm: $(PYTHON) already imports torch; creating $(VENV) with --system-site-packages"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    echo "mldm: creating $(VENV) with $(PYTHON)"; \
	    $(PYTHON) -m venv $(VENV); \
	fi

# Re-installs only when pyproject.toml changes (or the stamp is missing).
$(STAMP): pyproject.toml | $(VPY)
	@if ! $(VPY) -c "import torch" >/dev/null 2>&1; then \
	    echo "mldm: installing $(TORCH_SPEC)"; \
	    $(PIP) install "$(TORCH_SPEC)" $(QUIET_PIP); \
	fi
	@echo "mldm: pip install -e '.[test]'"
	@$(PIP) install -e '.[test]' $(QUIET_PIP)
	@touch $@

# pytest exit 5 = no tests collected: fail loudly, CI must never pass on zero tests.
test: $(STAMP)
	@rc=0; $(VPY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
	    echo "mldm: ERROR: pytest collected/ran no tests (exit 5); refusing to pass with zero tests" >&2; \
	fi; \
	exit $$rc

# The image_tiny preset end to end: both stages (training seed DEMO_SEED), 512 samples over the 9 prompts
# (DPM-Solver++, 20 steps), then the shapes2d judge. A fresh run each time.
demo: $(STAMP)
	@start=$$SECONDS; rm -rf $(DEMO_DIR); \
	$(MLDM) train experiment=image_tiny seed=$(DEMO_SEED) run_dir=$(DEMO_DIR)/run && \
	$(MLDM) sample run_dir=$(DEMO_DIR)/run num_samples=512 steps=20 out_dir=$(DEMO_DIR)/samples && \
	$(MLDM) evaluate run_dir=$(DEMO_DIR)/run samples_dir=$(DEMO_DIR)/samples && \
	echo "mldm demo: $$((SECONDS - start)) s; samples in $(DEMO_DIR)/samples, run in $(DEMO_DIR)/run"

core-demo: $(STAMP)
	$(VPY) benchmarks/core_demo.py

clean:
	rm -rf build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
