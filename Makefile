# The two commands of the README:  `make demo`  and  `make test`.
# Both create the environment first when it is missing (or when pyproject.toml changed).
VENV ?= .venv
STAMP := $(VENV)/.installed
export AUTOPILOT_HOME ?= $(CURDIR)/.autopilot
PYTEST_ARGS ?=
PACKAGES := contracts policies store telemetry economics serving workload training experiments gates controlplane

.PHONY: demo test test-fast env bench lint clean-state

env: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autopilot demo

# pytest exits 5 when it collected no test: that is not a failure of the suite.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check --quiet $(PACKAGES) tests benchmarks
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The pure tests only (no Ray, vLLM or Prefect engines started): a minute or two.
test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check --quiet $(PACKAGES) tests benchmarks
	$(VENV)/bin/python -m pytest -m "not integration" $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_ingest.py
	$(VENV)/bin/python benchmarks/bench_metrics.py

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests benchmarks

clean-state:
	rm -rf $(AUTOPILOT_HOME)
