# Both targets do all set-up themselves on a fresh machine with Python 3.11, git and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# every baseline, 3 seeds × 3 orders; ODE-M's committed jobs are kept (~20 min per job on one core)
	$(BIN)/cmbench run suites/micro-digits-merge.yaml --skip ode_m
	$(BIN)/cmbench report

# CI budget (README, "Tests and the CI budget"): `test` under 10 min on a fresh clone of a
# 2-core machine, install included; `.ci/run` (test, then test-slow) under 45 min.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# slower checks: tests marked slow (pytest exits 5 while there are none), then the jobs of a
# sample covering both micro suites and every component version, recomputed cold
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]
	$(BIN)/cmbench verify --sample 4

clean:
	rm -rf $(VENV) .cmbench
