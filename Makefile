# Both targets do all set-up themselves on a fresh machine with Python 3.11, git and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-full-size lint typecheck facts docs-facts report install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# computes: the quick suite from scratch in .demo/ (every data-free merge, ~100 s on 2 cores),
	# its leaderboard next to it, then the committed leaderboard.md and plots/ re-rendered
	rm -rf .demo
	$(BIN)/cmbench run suites/quick-merge.yaml --out .demo
	$(BIN)/cmbench report --results .demo/results
	$(BIN)/cmbench report
	$(BIN)/cmbench report --site site
	@echo "demo: .demo/leaderboard.md and .demo/plots/ (this run); leaderboard.md, plots/ and site/index.html (committed results);"
	@echo "      MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///.demo/.cmbench/mlflow.db"

# CI budget (docs/working-on-cmbench.md, "Tests and the CI budget"): `test` under 10 min on a
# fresh clone of a 2-core machine, install included; `.ci/run` (test, then test-slow) under 35 min.
test: lint typecheck facts
	$(BIN)/python -m pytest -q

# README.md and docs/*.md quote no fact of the repository that has changed (tools/docs_facts.py)
facts: $(STAMP)
	$(BIN)/python tools/docs_facts.py --check

docs-facts: $(STAMP)
	$(BIN)/python tools/docs_facts.py --write

# the committed report of the committed results: leaderboard.md, plots/, the paper tables
report: $(STAMP)
	$(BIN)/cmbench report
	mkdir -p docs/tables
	$(BIN)/cmbench report --format markdown --table stream > docs/tables/stream.md
	$(BIN)/cmbench report --format latex --table stream > docs/tables/stream.tex
	$(BIN)/cmbench report --format markdown --table benchmarks > docs/tables/benchmarks.md
	$(BIN)/cmbench report --format latex --table benchmarks > docs/tables/benchmarks.tex

# style and layout (ruff; configuration in pyproject.toml); the import layers are a test
# (tests/test_layers.py)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the whole package type-checks clean (settings in pyproject.toml; docs/working-on-cmbench.md, "Type checks")
typecheck: $(STAMP)
	$(BIN)/mypy cmbench

# slower checks: tests marked slow (pytest exits 5 while there are none), then the jobs of a
# sample covering both micro suites and every component version, recomputed cold
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not full_size" --durations=20 || [ $$? -eq 5 ]
	$(BIN)/cmbench verify --sample 4

# by hand (about 20 min on 2 cores; last result in docs/ci.md): the full-size ViT-B/32 rehearsal
test-full-size: $(STAMP)
	$(BIN)/python -m pytest -q -m full_size --durations=5

clean:
	rm -rf $(VENV) .cmbench
