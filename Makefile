# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints/torch-cpu.txt | cksum | cut -d' ' -f1)
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: demo test lint format venv clean

$(STAMP): setup.py constraints/torch-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip's mirror configuration prints one harmless warning per package; keep the log readable.
	@bash -o pipefail -c '$(PY) -m pip install -q -c constraints/torch-cpu.txt -e ".[test,parity]" 2>&1 | { grep -v "^WARNING: Location" || true; }'
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

test: lint
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
