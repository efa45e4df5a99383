# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints/torch-cpu.txt | cksum | cut -d' ' -f1)
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: demo test lint format venv clean bench

$(STAMP): setup.py constraints/torch-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints/torch-cpu.txt -e ".[test,parity]"
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --workdir runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check m2dit_jax launch configs tests benchmarks
	$(VENV)/bin/ruff format --check m2dit_jax launch configs tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format m2dit_jax launch configs tests benchmarks
	$(VENV)/bin/ruff check --fix m2dit_jax launch configs tests benchmarks

test: lint
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
