# Two commands set everything up on a fresh Debian/Ubuntu machine:
#   make test              system packages (apt), .venv, the project, then pytest
#   make bench BOARD=h743  the same set-up, then the benchmarks for a board
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOARD ?= h743
PYTEST_ARGS ?=
# the suite's workers (pytest-xdist; one per core of the 2-core CI machine); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile
APT_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm

.PHONY: test test-all bench setup system-deps clean

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "error: missing Debian packages:$$missing" >&2; \
	    echo "run:   sudo apt-get install -y --no-install-recommends$$missing   then run make again" >&2; \
	    exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(XDIST) -m '' $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run --board $(BOARD)

clean:
	rm -rf $(VENV) build out .pytest_cache

# Re-collect the cost model's measurements on this tree's kernels and retrain the shipped models
# (tvm_patch/cost/models, bench/cost_data; docs/cost-model.md): `make -j2 costmodel` does both cores at once.
.PHONY: costmodel costmodel-m4 costmodel-m7
costmodel: costmodel-m4 costmodel-m7

costmodel-m4 costmodel-m7: setup
	$(PY) -m bench.cost_model --retrain --core $(subst costmodel-,,$@) --out bench_out/$@
