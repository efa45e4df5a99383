# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints/torch-cpu.txt | cksum | cut -d' ' -f1)
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: demo test lint format venv clean libtpu aot

$(STAMP): setup.py constraints/torch-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip's mirror configuration prints one harmless warning per package; keep the log readable.
	@bash -o pipefail -c '$(PY) -m pip install -q -c constraints/torch-cpu.txt -e ".[test,parity,eval]" 2>&1 | { grep -v "^WARNING: Location" || true; }'
	@echo "installed pinned dependencies into $(VENV)"
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --workdir runs/demo

SRC := $(wildcard m2dit_jax launch configs tests benchmarks)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

format: $(STAMP)
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

# The TPU compiler, for compiling TPU programs on this machine (launch/compile.py --topology).
# Installed apart from the venv's site-packages: with libtpu importable, jax would try to open
# a TPU at start-up. Code that uses it runs in a process with PYTHONPATH=$(LIBTPU_DIR)
# (m2dit_jax.train.aot.libtpu_env). The version is jax[tpu]==0.10.2's pin.
LIBTPU_REQ := libtpu==0.0.42.1
LIBTPU_DIR := $(VENV)/libtpu
LIBTPU_STAMP := $(LIBTPU_DIR)/.installed-$(subst ==,-,$(LIBTPU_REQ))
AOT_CONFIG ?= configs/mask2dit_5b_sft.py
AOT_TOPOLOGY ?= v5p-8

$(LIBTPU_STAMP): | $(STAMP)
	@rm -rf $(LIBTPU_DIR)
	@bash -o pipefail -c '$(PY) -m pip install -q --no-deps --target $(LIBTPU_DIR) "$(LIBTPU_REQ)" 2>&1 | { grep -v "^WARNING: Location" || true; }'
	@echo "installed $(LIBTPU_REQ) into $(LIBTPU_DIR)"
	@touch $@

libtpu: $(LIBTPU_STAMP)

# e.g. make aot AOT_TOPOLOGY=v6e-8 AOT_CONFIG=configs/mask2dit_2b_sft.py
aot: $(LIBTPU_STAMP)
	$(PY) -m launch.compile --config $(AOT_CONFIG) --topology $(AOT_TOPOLOGY)

test: lint $(LIBTPU_STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
